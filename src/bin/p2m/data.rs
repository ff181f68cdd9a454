//! `p2m data` and `p2m models`: the dataset and model registries, and where each file resolves from.

use anyhow::Result;
use prompt2model::data::registry::Registry;
use prompt2model::models::registry::ModelRegistry;

pub fn data_list() -> Result<()> {
    let registry = Registry::from_env()?;
    println!(
        "mirror: {}",
        registry
            .paths
            .mirror
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(none)".into())
    );
    println!("cache:  {}\n", registry.paths.cache.display());
    for d in registry.datasets() {
        let files = registry.dataset_files(&d.id)?;
        let bytes: u64 = files.iter().map(|f| f.bytes).sum();
        println!(
            "{:<18} {:<16} {:>4} files {:>10} bytes  {}",
            d.id,
            d.format,
            files.len(),
            bytes,
            d.title
        );
    }
    Ok(())
}

pub fn data_fetch(ids: Vec<String>) -> Result<()> {
    let registry = Registry::from_env()?;
    let ids: Vec<String> = if ids.is_empty() {
        registry.datasets().iter().map(|d| d.id.clone()).collect()
    } else {
        ids
    };
    for id in ids {
        let files = registry.dataset_files(&id)?;
        let bar = indicatif::ProgressBar::new(files.len() as u64).with_message(id.clone());
        bar.set_style(indicatif::ProgressStyle::with_template("{msg:<18} {bar:30} {pos}/{len}")?);
        let mut origins = std::collections::BTreeMap::<String, usize>::new();
        for f in files {
            let r = registry.resolve_file(&f.path)?;
            *origins
                .entry(
                    format!("{:?}", r.origin).split_whitespace().next().unwrap_or("").to_string(),
                )
                .or_default() += 1;
            bar.inc(1);
        }
        bar.finish_and_clear();
        println!(
            "{id}: verified ({})",
            origins.iter().map(|(k, v)| format!("{v} from {k}")).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

pub fn models_list() -> Result<()> {
    let registry = ModelRegistry::from_env()?;
    for m in registry.models() {
        let offline = match m.wheel() {
            Some(w) => format!("offline: {}=={}", w.package, w.version),
            None => "online only".to_string(),
        };
        let hf = m.hf.as_ref().map(|h| h.repo.as_str()).unwrap_or("-");
        println!(
            "{:<34} {:<16} {:<40} {}",
            m.id,
            format!("{:?}", m.family).to_lowercase(),
            hf,
            offline
        );
    }
    Ok(())
}
