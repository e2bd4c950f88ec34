//! One integration-test binary; every test runs the real `palisweep`
//! executable on a temporary folder.
mod util;

mod adapters;
mod architecture;
mod asha;
mod bad_input;
mod bench;
mod browser;
mod budget;
mod chaos;
mod expansion;
mod experiments;
mod model_cli;
mod plan;
mod predictions;
mod reliability_input;
mod report;
mod report_real;
mod rerun;
mod scheduler;
mod secrets;
mod simulate;
mod slurm;
mod spec_errors;
mod tensorboard;
mod tpe;
mod worker;
