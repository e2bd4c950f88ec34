//! Exit codes, decided in one place.

use crate::devices::error::DeviceError;
use crate::devices::grammar::ParseDeviceError;
use crate::plan::build::PlanError;
use crate::spec::error::SpecError;

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_BAD_INPUT: u8 = 2;
pub const EXIT_INTERRUPTED: u8 = 130;

/// Bad input (spec, flags, devices, dataset) exits 2; anything else 1.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    let bad_input = error.chain().any(|cause| {
        cause.is::<SpecError>()
            || cause.is::<PlanError>()
            || cause.is::<ParseDeviceError>()
            || matches!(
                cause.downcast_ref::<DeviceError>(),
                Some(e) if !matches!(e, DeviceError::HostMemory(_))
            )
    });
    if bad_input {
        EXIT_BAD_INPUT
    } else {
        EXIT_FAILURE
    }
}
