//! `p2m publish RUN --repo OWNER/NAME [--dataset-repo OWNER/NAME] [--private]`: a run's packaged
//! model (and its generated data) to the Hugging Face hub ([`prompt2model::deploy::publish`]).

use std::path::PathBuf;

use clap::Args;
use prompt2model::deploy::publish::{
    plan_dataset, plan_model, Hub, HubToken, RepoId, UploadPlan, DEFAULT_ENDPOINT,
};

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// A run folder (`runs/<name>`, with `model/` from `p2m run`).
    pub run: PathBuf,
    /// The model repository, OWNER/NAME (created when missing).
    #[arg(long)]
    pub repo: RepoId,
    /// Also publish the run's generated data (`dataset/`) to this dataset repository.
    #[arg(long)]
    pub dataset_repo: Option<RepoId>,
    /// Create the repositories private (an existing repository keeps its visibility).
    #[arg(long)]
    pub private: bool,
    /// The hub's address.
    #[arg(long, default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// The environment variable holding the hub token (write access).
    #[arg(long, default_value = "HF_TOKEN")]
    pub token_env: String,
    /// List what would be uploaded (paths, sizes, LFS or not) and send nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let mut plans: Vec<UploadPlan> = vec![plan_model(&args.run, args.repo.clone())?];
    if let Some(repo) = &args.dataset_repo {
        // A model folder given directly: its run is the folder above.
        let run = if args.run.join("model").is_dir() {
            args.run.clone()
        } else {
            args.run.parent().map(PathBuf::from).unwrap_or_default()
        };
        plans.push(plan_dataset(&run, repo.clone())?);
    }
    if args.dry_run {
        for plan in &plans {
            let (lfs, bytes) =
                plan.files.iter().fold((0, 0u64), |(n, b), f| (n + usize::from(f.lfs), b + f.size));
            print!("{}", plan.listing());
            println!(
                "  {} files, {:.1} MB, {lfs} through Git LFS (the hub may move more to LFS); would go to {}",
                plan.files.len(),
                bytes as f64 / 1e6,
                plan.url(&args.endpoint)
            );
        }
        println!("dry run: nothing was sent");
        return Ok(());
    }
    let token = HubToken::from_env(&args.token_env)?;
    let hub = Hub::new(&args.endpoint, token)?;
    let summary = format!(
        "Upload from prompt2model-rs ({})",
        args.run.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
    );
    prompt2model::util::runtime::block_on(async {
        for plan in plans {
            let (repo_type, repo) = (plan.repo_type, plan.repo.clone());
            eprintln!(
                "publishing {} files to the {} repository {repo}…",
                plan.files.len(),
                repo_type.as_str()
            );
            let done = hub.publish(plan, args.private, &summary).await?;
            println!(
                "{} ({} files; LFS: {} sent, {} already on the hub; commit {})",
                done.url,
                done.files,
                done.lfs_uploaded,
                done.lfs_present,
                done.commit.as_deref().unwrap_or("?")
            );
        }
        anyhow::Ok(())
    })??;
    Ok(())
}
