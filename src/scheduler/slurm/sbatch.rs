//! One trial as one Slurm job: the `sbatch` options (from the `[slurm]`
//! table and the trial's memory estimate) and the batch script, which
//! `exec`s the worker so that Slurm's signals (scancel, the time limit,
//! preemption) reach it directly and its exit code is the job's.

use std::path::{Path, PathBuf};

use crate::devices::grammar::parse_bytes;
use crate::layout::TrialDir;
use crate::spec::schema::Slurm;
use crate::worker::contract::{StopAfter, WorkerCommand, shell_quote};

/// What a job is made from.
#[derive(Clone, Debug)]
pub struct JobRequest<'a> {
    pub slurm: &'a Slurm,
    pub sweep: &'a str,
    pub trial_id: &'a str,
    pub dir: &'a TrialDir,
    pub attempt: u32,
    /// The trial's memory estimate at the batch it runs (for the tiers).
    pub memory_bytes: u64,
    /// `--set` overrides (the out-of-memory back-off's batch shape).
    pub sets: &'a [String],
    /// The ASHA rung the worker stops at (`--stop-after`).
    pub stop_after: Option<StopAfter>,
    /// The palisweep the nodes run (the cluster shares it).
    pub exe: &'a Path,
}

impl JobRequest<'_> {
    /// Where the batch script is written (sbatch copies it at submission).
    pub fn script_path(&self) -> PathBuf {
        self.dir.path().join("slurm-job.sh")
    }

    /// `sbatch` options, without the script.
    pub fn sbatch_args(&self) -> Vec<String> {
        let s = self.slurm;
        let dir = self.dir.path().display();
        let mut args = vec![
            "--parsable".to_owned(),
            format!("--job-name=palisweep-{}-{}", self.sweep, self.trial_id),
            format!(
                "--comment=palisweep sweep {} trial {}",
                self.sweep, self.trial_id
            ),
            format!("--output={dir}/slurm-%j.out"),
            // The worker's stderr goes where the local backend puts it.
            format!("--error={dir}/worker.log"),
            "--open-mode=append".to_owned(),
            format!("--chdir={dir}"),
            format!("--cpus-per-task={}", s.cpus_per_trial),
        ];
        let mut option = |name: &str, value: &str| {
            if !value.is_empty() {
                args.push(format!("--{name}={value}"));
            }
        };
        option("partition", &s.partition);
        option("account", &s.account);
        option("qos", &s.qos);
        option("time", &s.time);
        option("mem", &s.mem_per_trial);
        let tier = self.tier();
        let gres = tier
            .map(|t| t.gres.as_str())
            .filter(|g| !g.is_empty())
            .unwrap_or(&s.gres);
        option("gres", gres);
        option("constraint", tier.map_or("", |t| t.constraint.as_str()));
        args.extend(s.extra_args.iter().cloned());
        args
    }

    /// The largest memory tier the trial's estimate exceeds.
    fn tier(&self) -> Option<&crate::spec::schema::MemoryTier> {
        self.slurm
            .memory_tiers
            .iter()
            .filter_map(|t| parse_bytes(&t.above).ok().map(|above| (above, t)))
            .filter(|(above, _)| self.memory_bytes > *above)
            .max_by_key(|(above, _)| *above)
            .map(|(_, t)| t)
    }

    /// The batch script. A job that Slurm requeues (preemption, node
    /// failure) runs it again: `SLURM_RESTART_COUNT` numbers that run as
    /// the next attempt, and the worker resumes from its checkpoint.
    pub fn script(&self) -> String {
        let command = WorkerCommand {
            trial_dir: self.dir.path().to_owned(),
            attempt: self.attempt,
            threads: self.slurm.cpus_per_trial,
            device: (self.slurm.device != "auto").then(|| self.slurm.device.clone()),
            sets: self.sets.to_vec(),
            watch_stdin: false,
            deterministic: false,
            stop_after: self.stop_after,
        };
        // A requeued job is the next attempt; Slurm gives the CPUs it granted.
        let worker = command.shell_line(self.exe, |flag| match flag {
            "--attempt" => Some(format!(
                "\"$(({} + ${{SLURM_RESTART_COUNT:-0}}))\"",
                self.attempt
            )),
            "--threads" => Some(format!(
                "\"${{SLURM_CPUS_PER_TASK:-{}}}\"",
                self.slurm.cpus_per_trial
            )),
            _ => None,
        });
        format!(
            "#!/bin/sh\n\
             # palisweep sweep {sweep}, trial {trial}, attempt {attempt} (written by `palisweep run`)\n\
             export OMP_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-{cpus}}}\"\n\
             export MKL_NUM_THREADS=\"$OMP_NUM_THREADS\"\n\
             export CUDA_DEVICE_ORDER=PCI_BUS_ID\n\
             {worker}\n",
            sweep = self.sweep,
            trial = self.trial_id,
            attempt = self.attempt,
            cpus = self.slurm.cpus_per_trial,
        )
    }

    /// The command line `plan --backend slurm` shows.
    pub fn command_line(&self) -> String {
        let mut line = String::from("sbatch");
        for arg in self.sbatch_args() {
            line.push(' ');
            line.push_str(&shell_quote(&arg));
        }
        line.push(' ');
        line.push_str(&shell_quote(&self.script_path().display().to_string()));
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::schema::MemoryTier;

    fn slurm() -> Slurm {
        Slurm {
            partition: "gpu".into(),
            account: String::new(),
            qos: "normal".into(),
            time: "02:00:00".into(),
            cpus_per_trial: 6,
            mem_per_trial: "64G".into(),
            gres: "gpu:1".into(),
            extra_args: vec!["--exclusive".into()],
            memory_tiers: vec![
                MemoryTier {
                    above: "40GiB".into(),
                    gres: "gpu:a100_80g:1".into(),
                    constraint: String::new(),
                },
                MemoryTier {
                    above: "20GiB".into(),
                    gres: String::new(),
                    constraint: "a100|h100".into(),
                },
            ],
            device: "auto".into(),
            poll_interval: 5.0,
            max_jobs: 0,
        }
    }

    fn request<'a>(
        slurm: &'a Slurm,
        dir: &'a TrialDir,
        gib: u64,
        sets: &'a [String],
    ) -> JobRequest<'a> {
        JobRequest {
            slurm,
            sweep: "demo",
            trial_id: "abc123",
            dir,
            attempt: 2,
            memory_bytes: gib << 30,
            sets,
            stop_after: None,
            exe: Path::new("/opt/palisweep/bin/palisweep"),
        }
    }

    #[test]
    fn options_come_from_the_slurm_table_and_empty_ones_are_left_out() {
        let s = slurm();
        let dir = TrialDir::from_path(Path::new("/shared/results/demo/trials/abc123"));
        let args = request(&s, &dir, 8, &[]).sbatch_args();
        for expected in [
            "--parsable",
            "--partition=gpu",
            "--qos=normal",
            "--time=02:00:00",
            "--mem=64G",
            "--cpus-per-task=6",
            "--gres=gpu:1",
            "--exclusive",
            "--error=/shared/results/demo/trials/abc123/worker.log",
        ] {
            assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
        }
        assert!(!args.iter().any(|a| a.starts_with("--account")), "{args:?}");
        assert!(
            !args.iter().any(|a| a.starts_with("--constraint")),
            "{args:?}"
        );
    }

    #[test]
    fn the_largest_memory_tier_a_trial_exceeds_decides_its_gres_and_constraint() {
        let s = slurm();
        let dir = TrialDir::from_path(Path::new("/r/t"));
        let small = request(&s, &dir, 10, &[]).sbatch_args();
        assert!(small.contains(&"--gres=gpu:1".to_owned()));
        let middle = request(&s, &dir, 30, &[]).sbatch_args();
        assert!(middle.contains(&"--gres=gpu:1".to_owned()), "{middle:?}");
        assert!(
            middle.contains(&"--constraint=a100|h100".to_owned()),
            "{middle:?}"
        );
        let large = request(&s, &dir, 50, &[]).sbatch_args();
        assert!(
            large.contains(&"--gres=gpu:a100_80g:1".to_owned()),
            "{large:?}"
        );
        assert!(
            !large.iter().any(|a| a.starts_with("--constraint")),
            "{large:?}"
        );
    }

    #[test]
    fn the_script_execs_the_worker_with_the_back_off_and_counts_requeues_as_attempts() {
        let mut s = slurm();
        let dir = TrialDir::from_path(Path::new("/r/it's"));
        let sets = vec!["train.batch_size=4".to_owned()];
        let script = request(&s, &dir, 1, &sets).script();
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        assert!(
            script.contains(
                "exec /opt/palisweep/bin/palisweep worker --trial '/r/it'\\''s' --attempt \"$((2 + ${SLURM_RESTART_COUNT:-0}))\""
            ),
            "{script}"
        );
        assert!(script.contains("--set train.batch_size=4"), "{script}");
        assert!(
            !script.contains("--device"),
            "auto leaves the device to the worker"
        );
        s.device = "cuda".into();
        assert!(
            request(&s, &dir, 1, &sets)
                .script()
                .contains(" --device cuda")
        );
    }

    #[test]
    fn the_command_line_quotes_what_the_shell_would_split() {
        let mut s = slurm();
        s.extra_args = vec!["--nodelist=gpu01".into()];
        s.memory_tiers.clear();
        let dir = TrialDir::from_path(Path::new("/r/t"));
        let line = request(&s, &dir, 1, &[]).command_line();
        assert!(line.starts_with("sbatch --parsable "), "{line}");
        assert!(
            line.contains("'--comment=palisweep sweep demo trial abc123'"),
            "{line}"
        );
        assert!(line.ends_with(" /r/t/slurm-job.sh"), "{line}");
    }
}
