//! Table 2, second job: one arm trained and evaluated in its own folder (a cell), resumable,
//! one process per folder.

use super::*;

impl Prepared {
    fn arm_dir(&self, arm: &ArmPlan) -> PathBuf {
        self.runs_dir.join(&arm.id)
    }

    /// The arm's finished record, if its folder holds one made with exactly this plan.
    pub fn finished(&self, arm: &ArmPlan) -> Option<ArmRecord> {
        let dir = self.arm_dir(arm);
        let record: ArmRecord =
            serde_json::from_str(&std::fs::read_to_string(dir.join(ARM_RECORD)).ok()?).ok()?;
        (record.key == arm.key && dir.join(ARM_PREDICTIONS).is_file()).then_some(record)
    }

    /// Train and evaluate one arm (a cell): its student resumes from the arm's folder after a
    /// kill; the predictions and then `arm.json` are written atomically, last of all.
    pub fn run_arm(&self, id: &str, models: &ModelRegistry, opts: &Options) -> Result<ArmRecord> {
        let arm = self.arm(id)?;
        if let Some(done) = self.finished(arm) {
            return Ok(done);
        }
        let arm_dir = self.arm_dir(arm);
        // One process per arm folder: a second one (another `--cell`, a Slurm task) stops here,
        // naming the first, instead of training into the same checkpoints.
        let _lock = crate::util::lock::FolderLock::acquire(&arm_dir.join("arm.lock"), false)?;
        if let Some(done) = self.finished(arm) {
            return Ok(done);
        }
        let mut student = Student::build(&self.scale.student, models, opts.device, opts.seed)?;
        let mut trainer =
            Trainer::new(self.scale.train.clone(), &mut student, arm_dir.join("student"));
        trainer.progress = opts.progress;
        trainer.label = arm.name.to_string();
        // `student/final/` is all the table uses once the arm is trained.
        trainer.keep_checkpoints = false;
        tracing::info!("table2: training `{}` on {} examples", arm.name, arm.train.len());
        let training = crate::util::mem::Phase::start();
        let summary = trainer
            .train(&arm.train, &arm.validation)
            .with_context(|| format!("training the `{}` arm", arm.name))?;
        let train_peak_rss_mb = training.peak_mb();
        // The optimizer's state, gradients and activations are freed: return them before
        // predicting (see crate::util::mem).
        crate::util::mem::release_free_memory();
        let predicting = crate::util::mem::Phase::start();
        let predict_start = std::time::Instant::now();
        let predicted = executor::predict_frame(
            &student,
            &self.instruction,
            &self.test_frame,
            &self.scale.executor,
        )
        .with_context(|| format!("predicting with the `{}` arm", arm.name))?;
        let predict_seconds = predict_start.elapsed().as_secs_f64();
        let predict_peak_rss_mb = predicting.peak_mb();
        crate::report::write_parquet_atomic(&predicted, &arm_dir.join(ARM_PREDICTIONS))?;
        let record = ArmRecord {
            key: arm.key.clone(),
            arm: arm.name.to_string(),
            data: arm.data.clone(),
            train_examples: arm.train.len(),
            cost_usd: arm.cost.0,
            cost_basis: arm.cost.1.clone(),
            summary,
            predict_seconds: Some(predict_seconds),
            train_peak_rss_mb,
            predict_peak_rss_mb,
        };
        crate::util::fs::write_json(&arm_dir.join(ARM_RECORD), &record)?;
        Ok(record)
    }

    /// Every arm in this process, one after the other (finished arms are loaded, an interrupted
    /// one resumes).
    pub fn run_all(&self, models: &ModelRegistry, opts: &Options) -> Result<()> {
        for arm in &self.arms {
            self.run_arm(&arm.id, models, opts)?;
            // The arm's student is gone: its memory goes back before the next arm trains.
            crate::util::mem::release_free_memory();
        }
        if let Some(mb) = crate::util::mem::run_peak_resident_mb() {
            tracing::info!("table2: peak resident memory of the run {:.0} MB", mb);
        }
        Ok(())
    }

    /// The cells (one per arm) as jobs for the local runner and the Slurm writer.
    pub fn jobs(&self) -> crate::tables::cells::CellJobs {
        crate::tables::cells::CellJobs {
            table: "table2".into(),
            scale: self.scale_name.clone(),
            detail: "one SQuAD student per arm".into(),
            ids: self.arms.iter().map(|a| a.id.clone()).collect(),
            done: self.arms.iter().map(|a| self.finished(a).is_some()).collect(),
            runs_dir: self.runs_dir.clone(),
            slurm: self.scale.slurm.clone(),
        }
    }
}
