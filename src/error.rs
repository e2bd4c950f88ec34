//! Exit codes, decided in one place.

use crate::data::annotations::DataError;
use crate::devices::error::DeviceError;
use crate::devices::grammar::ParseDeviceError;
use crate::model::config::ConfigError;
use crate::model::hub::HubError;
use crate::model::image::ImageError;
use crate::model::paligemma::ModelError;
use crate::model::processor::ProcessorError;
use crate::model::weights::WeightError;
use crate::plan::build::PlanError;
use crate::spec::error::SpecError;

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_BAD_INPUT: u8 = 2;
pub const EXIT_INTERRUPTED: u8 = 130;

/// Bad input (spec, flags, devices, dataset, checkpoint files) exits 2;
/// anything else (a failed download, a libtorch error) 1.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    let bad_input = error.chain().any(|cause| {
        cause.is::<SpecError>()
            || cause.is::<PlanError>()
            || cause.is::<ParseDeviceError>()
            || cause.is::<DataError>()
            || cause.is::<ImageError>()
            || cause.is::<ProcessorError>()
            || cause.is::<WeightError>()
            || cause.is::<ConfigError>()
            || matches!(
                cause.downcast_ref::<ModelError>(),
                Some(ModelError::Config(_) | ModelError::Weights(_) | ModelError::Input(_))
            )
            || matches!(
                cause.downcast_ref::<HubError>(),
                Some(HubError::NotCached { .. } | HubError::Incomplete { .. })
            )
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
