//! Table 2, first job: every arm's data drawn (nothing trained) — the held-out SQuAD articles,
//! the annotation pool, the retrieved and generated rows through the shared assembly.

use super::*;

/// Loads a local dataset's rows through the dataset retriever's own textualisation (its natural
/// columns as `col: value` lines), so the arm sees what `p2m retrieve-dataset` would save.
fn retrieved_rows(registry: &Registry, registry_id: &str) -> Result<(Pairs, Vec<ResolvedFile>)> {
    let entry = registry.dataset(registry_id)?;
    let choice = crate::dataset_retriever::default_columns(&entry.format).with_context(|| {
        format!(
            "dataset `{registry_id}` (format {}) has no default columns for retrieval",
            entry.format
        )
    })?;
    let (splits, files) = crate::dataset_retriever::load_raw(registry, registry_id)?;
    let mut rows = Vec::new();
    for split in &splits {
        let frame = crate::dataset_retriever::columns_as_text(split, &choice, usize::MAX)?;
        let inputs = loaders::string_column(&frame, loaders::INPUT)?;
        let refs = loaders::string_list_column(&frame, loaders::REFERENCES)?;
        rows.extend(
            inputs
                .into_iter()
                .zip(refs)
                .map(|(i, r)| (i, r.into_iter().next().unwrap_or_default())),
        );
    }
    Ok((rows, files))
}

fn choose_retrieved(
    registry: &Registry,
    setting: &str,
    instruction: &str,
    progress: bool,
) -> Result<Retrieved> {
    if setting != "auto" {
        let (rows, files) = retrieved_rows(registry, setting)?;
        let note = format!(
            "Retrieval arm: dataset `{setting}` as configured by the scale ({} rows).",
            rows.len()
        );
        return Ok(Retrieved { rows, registry_id: setting.to_string(), note, files });
    }
    let (retriever, _) =
        crate::dataset_retriever::open_dataset_retriever(&registry.paths, None, progress)?;
    let ranked = retriever.retrieve(instruction, None)?;
    let chosen = ranked
        .iter()
        .find(|c| c.loadable() && c.local.as_ref().is_some_and(|l| l.registry_id != SQUAD_DATASET))
        .context("the dataset retriever found no dataset loadable here other than SQuAD")?;
    let local = chosen.local.as_ref().expect("loadable");
    let (rows, files) = retrieved_rows(registry, &local.registry_id)?;
    let squad_rank = ranked
        .iter()
        .find(|c| c.name == "squad")
        .map(|c| c.rank.to_string())
        .unwrap_or_else(|| "—".into());
    let top: Vec<String> =
        ranked.iter().take(5).map(|c| format!("{} ({:.3})", c.name, c.score)).collect();
    let note = format!(
        "Retrieval arm: the dataset retriever (MiniLM dense search over the {} dataset descriptions) ranks for the SQuAD instruction: {}; `squad` itself at {squad_rank}, excluded because it is the task's own test data. The best-ranked dataset loadable here is `{}` (rank {}, registry `{}`, {} rows). The paper retrieved the Children's Book Test, of which only a one-example dummy exists offline.",
        ranked.len(),
        top.join(", "),
        chosen.name,
        chosen.rank,
        local.registry_id,
        rows.len()
    );
    Ok(Retrieved { rows, registry_id: local.registry_id.clone(), note, files })
}

/// `(input, output)` rows of a recorded `save_to_disk` folder (columns `input_col`, `output_col`).
fn recorded_pairs(registry: &Registry, folder: &str) -> Result<(Pairs, Vec<ResolvedFile>)> {
    let (disk, local, files) = loaders::load_registered_hf_disk(registry, folder)?;
    let frame = match disk {
        HfDisk::Dataset(df) => df,
        HfDisk::Dict(mut d) => d
            .remove("train")
            .with_context(|| format!("{}: a DatasetDict without a train split", local.display()))?,
    };
    let inputs = loaders::string_column(&frame, "input_col")
        .with_context(|| format!("{}: no `input_col` column", local.display()))?;
    let outputs = loaders::string_column(&frame, "output_col")
        .with_context(|| format!("{}: no `output_col` column", local.display()))?;
    Ok((inputs.into_iter().zip(outputs).collect(), files))
}

/// SQuAD split by article: `(pool, test)` row indices.
fn split_by_article(titles: &[String], seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut articles: Vec<&String> = titles.iter().collect::<BTreeSet<_>>().into_iter().collect();
    SplitMix64::new(seed ^ 0x5155_4144).shuffle(&mut articles);
    let pool_articles: BTreeSet<&String> = articles[..articles.len() / 2].iter().copied().collect();
    (0..titles.len()).partition(|&i| pool_articles.contains(&titles[i]))
}

/// One arm's data and cost, before its key is computed.
struct Arm {
    name: &'static str,
    data: String,
    train: Vec<TextPair>,
    validation: Vec<TextPair>,
    cost: (Option<f64>, String),
}

impl Arm {
    /// The arm with its key: the sha256 of everything that decides its result (scale, seed,
    /// data, test questions, instruction).
    fn plan(
        self,
        scale: &Scale,
        seed: u64,
        test_ids: &[String],
        instruction: &str,
    ) -> Result<ArmPlan> {
        let key = crate::util::fs::sha256_hex(
            serde_json::to_string(&serde_json::json!({
                "scale": scale, "seed": seed, "arm": self.name, "train": self.train,
                "validation": self.validation, "test": test_ids, "instruction": instruction,
            }))?
            .as_bytes(),
        );
        Ok(ArmPlan {
            name: self.name,
            id: slug(self.name),
            data: self.data,
            train: self.train,
            validation: self.validation,
            cost: self.cost,
            key,
        })
    }
}

/// Draws every arm's data (nothing is trained).
pub fn prepare(registry: &Registry, opts: &Options) -> Result<Prepared> {
    let data_dir = &registry.paths.data;
    let (scales, cost_model) = load_scales(data_dir)?;
    let scale = scales
        .get(&opts.scale)
        .with_context(|| {
            format!(
                "no scale `{}` in {} (have: {})",
                opts.scale,
                data_dir.join("table2_scales.toml").display(),
                scales.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?
        .clone();
    let tasks = crate::data::tasks::load_tasks(data_dir)?;
    let squad_task =
        crate::data::tasks::find(&tasks, "squad").context("data/tasks.toml has no `squad` task")?;
    let instruction = squad_task.instruction.clone();
    let paper = crate::data::paper::load_paper_results(data_dir)?.table2;
    let runs_dir = opts
        .runs_dir
        .clone()
        .unwrap_or_else(|| registry.paths.cache.join("runs/table2").join(&opts.scale));
    let mut config = serde_json::json!({ "scale": opts.scale, "scale_settings": scale, "cost_model": cost_model, "generated": opts.generated, "seed": opts.seed, "retrieval_dataset_setting": scale.retrieval_dataset, "device": format!("{:?}", opts.device), "runs_dir": runs_dir });
    if let Some(t) = &opts.teacher {
        config["transform_teacher"] =
            serde_json::json!({ "base_url": t.base_url, "model": t.model, "kind": t.kind });
    }
    let mut manifest = Manifest::new("table2", &registry.paths.root, config);
    let mut notes = vec![format!("Scale `{}`: {}.", opts.scale, scale.description)];

    // --- SQuAD: annotation pool and held-out test set, split by article ---------------------------
    let squad = loaders::load_dataset(registry, SQUAD_DATASET)?;
    manifest.add_inputs(squad.files.clone());
    let frame = &squad.frame;
    let titles = loaders::string_column(frame, "title")?;
    let contexts = loaders::string_column(frame, "context")?;
    let inputs = loaders::string_column(frame, loaders::INPUT)?;
    let references = loaders::string_list_column(frame, loaders::REFERENCES)?;
    let (pool_idx, held_out_idx) = split_by_article(&titles, opts.seed);
    let test_articles: BTreeSet<&String> = held_out_idx.iter().map(|&i| &titles[i]).collect();
    let all_test = held_out_idx.len();
    // The questions evaluated: a seeded draw of the held-out ones (its salt, 0x7E57, is kept so
    // that earlier reports keep their questions; `held_out_idx` is ascending, so the draw is too).
    let test_idx: Vec<usize> =
        crate::util::rng::seeded_subset(all_test, scale.test_examples, opts.seed, 0x7E57)
            .into_iter()
            .map(|i| held_out_idx[i])
            .collect();
    let test_frame = frame
        .take(&IdxCa::from_vec("idx".into(), test_idx.iter().map(|&i| i as IdxSize).collect()))?
        .select([loaders::ID, loaders::INPUT, loaders::REFERENCES])?;
    notes.push(format!(
        "Only the SQuAD v1.1 dev set is available here. Its {} articles are split in two (seed {}): {} questions of {} articles form the annotation pool, {} questions of {} articles the held-out test set; {} of these are evaluated. No arm trains on a held-out article.",
        titles.iter().collect::<BTreeSet<_>>().len(),
        opts.seed,
        pool_idx.len(),
        pool_idx.iter().map(|&i| &titles[i]).collect::<BTreeSet<_>>().len(),
        all_test,
        test_articles.len(),
        test_idx.len()
    ));

    let annotated_rows: Vec<(String, String)> = pool_idx
        .iter()
        .map(|&i| (inputs[i].clone(), references[i].first().cloned().unwrap_or_default()))
        .collect();
    let annotated_context: Vec<&String> = pool_idx.iter().map(|&i| &contexts[i]).collect();

    // --- generated and retrieved data -------------------------------------------------------------
    let (generated_rows, generated_cost, generated_basis) =
        generated_data(registry, &opts.generated, &mut manifest)?;
    let retrieved =
        choose_retrieved(registry, &scale.retrieval_dataset, &instruction, opts.progress)?;
    manifest.add_inputs(retrieved.files.clone());
    notes.push(retrieved.note.clone());
    let retrieved_rows = retrieved.rows;
    let retrieved_id = retrieved.registry_id;
    let generated_id = match &opts.generated {
        GeneratedSource::Recorded => RECORDED_GENERATED.to_string(),
        GeneratedSource::Dir(d) => d.display().to_string(),
    };
    notes.push(format!("Generation arm: {generated_basis}, {} rows.", generated_rows.len()));

    let n = scale.examples_per_source;
    let v = scale.validation_examples;
    // Every arm's data is assembled as `p2m run` assembles it (pipeline::assemble): each source
    // split and capped on its own, here at `n` training and `v` validation rows, no test split
    // carved (every arm is tested on the held-out SQuAD articles), and no cut over the sources
    // together: "retrieval + generation" trains on exactly the rows of the two single-source arms,
    // n + n, as the paper's 3,000 + 3,000. Generated data is task 0, retrieved data task 1, as the
    // reference; annotated SQuAD stands in for a user's own data: task 0, the task the student is
    // asked to do at test time.
    let split =
        SplitConfig { max_train: n, max_validation: v, seed: opts.seed, ..SplitConfig::default() };
    let no_cut = Cut { max_train: 0, max_validation: 0, retrieved_share: None };
    let source = |rows: &[(String, String)]| {
        SourceRows::tested_elsewhere(
            rows.iter().map(|(i, o)| Example::new(i.clone(), o.clone())).collect(),
        )
    };
    let (gen_source, ret_source, ann_source) =
        (source(&generated_rows), source(&retrieved_rows), source(&annotated_rows));
    let nothing = SourceRows::default();
    let generation_only =
        assemble_sources(&gen_source, &generated_id, &nothing, "", &split, &no_cut);
    let retrieval_only =
        assemble_sources(&nothing, "", &ret_source, &retrieved_id, &split, &no_cut);
    let both =
        assemble_sources(&gen_source, &generated_id, &ret_source, &retrieved_id, &split, &no_cut);
    let annotation = assemble_sources(&ann_source, SQUAD_DATASET, &nothing, "", &split, &no_cut);
    let (gen_train, ret_train) = (generation_only.train.len(), retrieval_only.train.len());
    if gen_train < n || ret_train < n {
        notes.push(format!(
            "Fewer rows than the scale asks for: generated {gen_train} / retrieved {ret_train} of {n}."
        ));
    }
    notes.push(format!(
        "Each arm's data is split as `p2m run` splits it (src/pipeline/assemble.rs): every source on its own, a seeded 0.7 : 0.1 share of its rows for training and validation, capped at {n} and {v}; \"retrieval + generation\" is the union of the two single-source arms' rows ({}).",
        both.mix.describe()
    ));
    // The annotation arm's cost counts the distinct paragraphs its training questions come from.
    let context_of: std::collections::HashMap<&str, &str> = pool_idx
        .iter()
        .zip(&annotated_context)
        .map(|(&i, c)| (inputs[i].as_str(), c.as_str()))
        .collect();
    let ann_paragraphs = annotation
        .train
        .iter()
        .filter_map(|r| context_of.get(r.input.as_str()))
        .collect::<BTreeSet<_>>()
        .len();
    let pairs = |rows: &[Row]| -> Vec<TextPair> {
        rows.iter()
            .map(|r| TextPair {
                source: trainer::model_input(r.task_id, &instruction, &r.input),
                target: r.output.clone(),
            })
            .collect()
    };
    let pricing = Pricing::for_model(&cost_model.recorded_teacher);
    let gen_cost = |rows: &[Row]| -> (Option<f64>, String) {
        match (&opts.generated, generated_cost) {
            (GeneratedSource::Dir(_), Some(total)) => (
                Some(total * rows.len() as f64 / generated_rows.len().max(1) as f64),
                "measured (generation log), prorated to the rows used".into(),
            ),
            (GeneratedSource::Dir(_), None) => (None, "unknown (no generation log)".into()),
            (GeneratedSource::Recorded, _) => {
                let tokens: u64 = rows
                    .iter()
                    .map(|r| estimate_tokens(&r.input) + estimate_tokens(&r.output))
                    .sum();
                (Some(tokens as f64 / 1000.0 * pricing.output_per_1k_usd), format!("lower bound: completion tokens of the rows used (~{tokens}, estimated) at {} output prices; the prompts were not recorded", cost_model.recorded_teacher))
            }
        }
    };
    let annotation_cost = ann_paragraphs as f64 * cost_model.annotation_minutes_per_paragraph
        / 60.0
        * cost_model.annotation_usd_per_hour;

    let mut arm_list = vec![
        Arm { name: "retrieval only", data: retrieved_id.clone(), train: pairs(&retrieval_only.train), validation: pairs(&retrieval_only.validation), cost: (Some(0.0), "retrieved data is free".into()) },
        Arm { name: "generation only", data: generated_id.clone(), train: pairs(&generation_only.train), validation: pairs(&generation_only.validation), cost: gen_cost(&generation_only.train) },
        Arm {
            name: "retrieval + generation",
            data: format!("{retrieved_id} + {generated_id}"),
            train: pairs(&both.train),
            validation: pairs(&both.validation),
            cost: gen_cost(&generation_only.train),
        },
        Arm {
            name: "custom annotation",
            data: format!("{SQUAD_DATASET} (annotation-pool articles)"),
            train: pairs(&annotation.train),
            validation: pairs(&annotation.validation),
            cost: (
                Some(annotation_cost),
                format!(
                    "{ann_paragraphs} SQuAD paragraphs × {} min at ${}/h (SQuAD's crowdworker rate and time per paragraph)",
                    cost_model.annotation_minutes_per_paragraph, cost_model.annotation_usd_per_hour
                ),
            ),
        },
    ];
    match &opts.teacher {
        Some(settings) => {
            let (rows, cost, note) = transformed::transform_retrieved(
                settings,
                &runs_dir,
                &squad_task.prompt,
                &retrieval_only,
                opts.seed,
            )?;
            notes.push(note);
            let data =
                format!("{retrieved_id} (transformed by {}) + {generated_id}", settings.model);
            let mixed = assemble_sources(&gen_source, &generated_id, &rows, &data, &split, &no_cut);
            let (gen_cost, basis) = gen_cost(&generation_only.train);
            let cost = (
                gen_cost.map(|g| g + cost),
                format!("{basis}; plus the transform's answers at {}'s prices", settings.model),
            );
            arm_list.insert(
                3,
                Arm {
                    name: transformed::TRANSFORMED_ARM,
                    data,
                    train: pairs(&mixed.train),
                    validation: pairs(&mixed.validation),
                    cost,
                },
            );
        }
        None => notes.push(transformed::skipped_note()),
    }

    let test_ids = loaders::string_column(&test_frame, loaders::ID)?;
    let arms = arm_list
        .into_iter()
        .map(|a| a.plan(&scale, opts.seed, &test_ids, &instruction))
        .collect::<Result<Vec<_>>>()?;
    Ok(Prepared {
        scale_name: opts.scale.clone(),
        scale,
        instruction,
        test_frame,
        arms,
        paper,
        notes,
        manifest,
        runs_dir,
    })
}

impl ArmPlan {
    /// The arm's training pairs, in training order.
    pub fn train(&self) -> &[TextPair] {
        &self.train
    }
}

impl Prepared {
    pub fn arm(&self, id: &str) -> Result<&ArmPlan> {
        self.arms.iter().find(|a| a.id == id).with_context(|| {
            format!(
                "no arm `{id}` in Table 2 (cells: {})",
                self.arms.iter().map(|a| a.id.as_str()).collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// The generated arm's rows, their cost when it is known, and what they are (the recorded
/// gpt-3.5-turbo data, or a folder of the project's generator with its log).
fn generated_data(
    registry: &Registry,
    source: &GeneratedSource,
    manifest: &mut Manifest,
) -> Result<(Pairs, Option<f64>, String)> {
    Ok(match source {
        GeneratedSource::Recorded => {
            let (rows, files) = recorded_pairs(registry, RECORDED_GENERATED)?;
            manifest.add_inputs(files);
            (rows, None, format!("recorded gpt-3.5-turbo data ({RECORDED_GENERATED})"))
        }
        GeneratedSource::Dir(dir) => {
            let path = dir.join(crate::dataset_generator::EXAMPLES_FILE);
            let examples = crate::data::examples::read_examples_jsonl(&path)
                .with_context(|| format!("reading generated examples {}", path.display()))?;
            let log_path = dir.join(crate::dataset_generator::LOG_FILE);
            let log: Option<crate::dataset_generator::GenerationLog> =
                std::fs::read_to_string(&log_path).ok().and_then(|t| serde_json::from_str(&t).ok());
            let cost = log.as_ref().map(|l| l.cost_usd);
            let basis = match &log {
                Some(l) => format!(
                    "generated by the project's generator ({} / {}), {}",
                    l.backend,
                    l.model,
                    dir.display()
                ),
                None => format!(
                    "generated data in {} (no generation_log.json: cost unknown)",
                    dir.display()
                ),
            };
            (examples.into_iter().map(|e| (e.input, e.output)).collect(), cost, basis)
        }
    })
}
