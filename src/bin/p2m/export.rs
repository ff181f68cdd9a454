//! `p2m export RUN --gguf`: a run's decoder student as a GGUF file for llama.cpp (its CLI, its
//! server, llama-cpp-python) and Ollama, with a `Modelfile` beside it.

use std::path::PathBuf;

use clap::Args;
use prompt2model::export::{self, GgufType, ModelfileSettings, PromptTemplate};
use prompt2model::pipeline::package::{ModelManifest, MANIFEST_FILE};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A run folder (`runs/<name>`) or its packaged model folder (`runs/<name>/model`).
    pub target: PathBuf,
    /// Write a GGUF (llama.cpp's format; the only export there is so far).
    #[arg(long, required = true)]
    pub gguf: bool,
    /// How the weight matrices are stored: `f16` (the trained weights to 3 significant digits)
    /// or `q8_0` (8-bit blocks, half the size); `f32` keeps them exactly.
    #[arg(long = "type", default_value = "f16")]
    pub ty: GgufType,
    /// Output folder [default: `<run>/export/gguf-<type>/`]; gets `model.gguf` and `Modelfile`.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let (model_dir, run_dir) = if args.target.join(MANIFEST_FILE).is_file() {
        let run = args.target.parent().map(PathBuf::from).unwrap_or_default();
        (args.target.clone(), run)
    } else if args.target.join("model").join(MANIFEST_FILE).is_file() {
        (args.target.join("model"), args.target.clone())
    } else {
        anyhow::bail!(
            "{} is neither a run folder (runs/<name> with model/{MANIFEST_FILE}) nor a packaged model folder (with {MANIFEST_FILE}); make one with `p2m run`",
            args.target.display()
        );
    };
    let manifest = ModelManifest::read(&model_dir)?;
    let out_dir =
        args.out.unwrap_or_else(|| run_dir.join("export").join(format!("gguf-{}", args.ty)));
    let template =
        PromptTemplate { task_id: manifest.executor.task_id, instruction: manifest.instruction };
    let gguf = out_dir.join("model.gguf");
    // The packaged model's chat template (decoder tokenizers add no special tokens around text).
    let chat_template = prompt2model::deploy::transformers::chat_template(
        template.task_id,
        &template.instruction,
        "",
        "",
    );
    let exported =
        export::export_gguf(&model_dir, args.ty, Some(&chat_template), &manifest.name, &gguf)?;
    let stop = exported.eos_token.as_deref().ok_or_else(|| {
        anyhow::anyhow!("{}: the student has no EOS token to stop on", model_dir.display())
    })?;
    let settings = ModelfileSettings {
        max_new_tokens: manifest.executor.max_new_tokens,
        repetition_penalty: manifest.executor.repetition_penalty,
    };
    let modelfile = out_dir.join("Modelfile");
    prompt2model::util::fs::write_atomic(
        &modelfile,
        export::ollama_modelfile(&template, stop, &settings)?.as_bytes(),
    )
    .map_err(|e| anyhow::anyhow!("writing {}: {e}", modelfile.display()))?;
    export::readable_by_all(&modelfile)?;
    println!(
        "{} ({} tensors, {:.1} MB, {}) and {}\n  llama.cpp: llama-cli -m {} -p '<task {}>…\\nExample:\\n<input>\\nLabel:\\n'\n  Ollama:    cd {} && ollama create {} -f Modelfile",
        gguf.display(),
        exported.tensors,
        exported.bytes as f64 / 1e6,
        args.ty,
        modelfile.display(),
        gguf.display(),
        template.task_id,
        out_dir.display(),
        manifest.name
    );
    Ok(())
}
