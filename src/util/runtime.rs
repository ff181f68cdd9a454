//! Async code from synchronous callers: the library's HTTP clients are async (reqwest, hf-hub),
//! most of its callers (model loading, the registries, the pipeline's stages) are not.

/// Drive `future` to completion from synchronous code on a fresh current-thread runtime. A
/// synchronous function that fetches lazily (a model file on first use) can be reached from
/// async code, where blocking on a nested runtime panics ("cannot start a runtime from within a
/// runtime"); there the fresh runtime runs on a scoped thread of its own.
pub fn block_on<F>(future: F) -> std::io::Result<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    let run = move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(future))
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(run).join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    } else {
        run()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_from_plain_code() {
        assert_eq!(block_on(async { 6 * 7 }).unwrap(), 42);
    }

    #[tokio::test]
    async fn runs_from_inside_a_runtime() {
        // A nested `Runtime::block_on` would panic here.
        let answer = block_on(async {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            "done"
        });
        assert_eq!(answer.unwrap(), "done");
    }
}
