//! The Slurm backend: each trial is one `sbatch` job running
//! `palisweep worker` on the shared results folder. Jobs outlive the
//! orchestrator (they do not watch its stdin); the orchestrator stays the
//! only writer of the store: it follows each job's state through
//! `squeue`/`scontrol` ([`client`]) and ingests the trial's `events.jsonl`
//! as it grows ([`tail`]). [`sbatch`] turns a trial into its job;
//! [`dispatcher`] is the loop, with the local backend's retry and
//! out-of-memory rules ([`super::fate`]).
pub mod client;
pub mod dispatcher;
pub mod sbatch;
pub mod tail;
