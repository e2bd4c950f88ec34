//! Everything the commands print on standard output goes through here, so
//! that a reader who stops early (`palisweep status --json | head -c 5`)
//! ends the command quietly: a closed pipe is [`OutputError::Closed`],
//! which the top level exits 0 on, never a panic.

use std::fmt;
use std::io::{self, Write as _};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The reader went away: not a failure of the command.
    #[error("standard output was closed")]
    Closed,
    #[error("cannot write to standard output: {0}")]
    Io(io::Error),
}

impl From<io::Error> for OutputError {
    fn from(error: io::Error) -> Self {
        if error.kind() == io::ErrorKind::BrokenPipe {
            OutputError::Closed
        } else {
            OutputError::Io(error)
        }
    }
}

/// Writes to standard output (locked, flushed), returning what `print!`
/// would panic on.
pub fn write(args: fmt::Arguments<'_>) -> Result<(), OutputError> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)?;
    out.flush()?;
    Ok(())
}

/// `print!` that returns [`OutputError`] instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::commands::output::write(format_args!($($arg)*))
    };
}

/// `println!` that returns [`OutputError`] instead of panicking.
macro_rules! outln {
    () => {
        $crate::commands::output::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::commands::output::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};

/// Whether `error` is standard output closing under the command.
pub fn closed(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| matches!(cause.downcast_ref(), Some(OutputError::Closed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_is_closed_and_other_errors_are_not() {
        let closed_pipe = OutputError::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(closed(
            &anyhow::Error::from(closed_pipe).context("printing")
        ));
        let full = OutputError::from(io::Error::from(io::ErrorKind::StorageFull));
        assert!(!closed(&anyhow::Error::from(full)));
    }
}
