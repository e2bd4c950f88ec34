//! One file per subcommand: validated inputs in, effects out.
pub mod plan;
