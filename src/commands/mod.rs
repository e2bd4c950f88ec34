//! One file per subcommand: validated inputs in, effects out.
pub mod bench;
pub mod checkpoint;
pub mod eval;
pub mod export;
pub mod fetch;
pub mod init_data;
pub mod init_tiny;
pub mod inspect;
pub mod output;
pub mod plan;
pub mod predict;
pub mod rerun;
pub mod run;
pub mod runtime;
pub mod simulate;
pub mod worker;
