//! Exit codes, decided in one place.

use crate::data::annotations::DataError;
use crate::data::loader::LoaderError;
use crate::devices::error::DeviceError;
use crate::devices::grammar::ParseDeviceError;
use crate::export::ExportError;
use crate::model::adapt::peft::PeftError;
use crate::model::checkpoint::hub::HubError;
use crate::model::checkpoint::verify::CheckpointError;
use crate::model::checkpoint::weights::WeightError;
use crate::model::config::ConfigError;
use crate::model::network::paligemma::ModelError;
use crate::model::preprocess::image::ImageError;
use crate::model::preprocess::processor::ProcessorError;
use crate::plan::build::PlanError;
use crate::preflight::PreflightError;
use crate::report::ReportError;
use crate::rerun::RerunError;
use crate::scheduler::prepare::RunError;
use crate::scheduler::slurm::client::SlurmError;
use crate::search::record::RecordError;
use crate::search::simulate::SimulateError;
use crate::spec::error::SpecError;
use crate::track::show_predictions::ShowPredictionsError;
use crate::track::store::StoreError;
use crate::train::evaluate::EvalError;

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
            || matches!(
                cause.downcast_ref::<RerunError>(),
                Some(RerunError::Mismatch(_) | RerunError::NeverFinished(_))
            )
            || matches!(
                cause.downcast_ref::<RunError>(),
                Some(
                    RunError::Plan(_)
                        | RunError::MadeUpDevices { .. }
                        | RunError::Redacted { .. }
                        | RunError::Slurm(SlurmError::Rejected { .. })
                )
            )
            || cause.downcast_ref::<StoreError>().is_some_and(store_bad_input)
            // `ReportError::Store` is transparent: its store error is not a
            // cause of its own in the chain.
            || match cause.downcast_ref::<ReportError>() {
                Some(ReportError::Store(e)) => store_bad_input(e),
                Some(ReportError::UnknownMetric { .. }) => true,
                _ => false,
            }
            || cause
                .downcast_ref::<ShowPredictionsError>()
                .is_some_and(ShowPredictionsError::is_bad_input)
            || cause.is::<ParseDeviceError>()
            // A recorded sweep that cannot be replayed as asked.
            || cause.is::<RecordError>()
            || cause.is::<SimulateError>()
            || cause.is::<DataError>()
            || cause.is::<ImageError>()
            || cause.is::<LoaderError>()
            || matches!(
                cause.downcast_ref::<EvalError>(),
                Some(EvalError::Loader(_) | EvalError::Processor(_))
            )
            || cause.is::<ProcessorError>()
            || cause
                .downcast_ref::<WeightError>()
                .is_some_and(weights_bad_input)
            || cause.is::<ConfigError>()
            || cause.is::<ExportError>()
            || cause
                .downcast_ref::<PeftError>()
                .is_some_and(adapter_bad_input)
            || cause
                .downcast_ref::<ModelError>()
                .is_some_and(ModelError::is_bad_input)
            || cause.is::<CheckpointError>()
            || cause
                .downcast_ref::<PreflightError>()
                .is_some_and(PreflightError::is_bad_input)
            || matches!(
                cause.downcast_ref::<HubError>(),
                Some(
                    HubError::NotCached { .. }
                        | HubError::Incomplete { .. }
                        | HubError::Unreachable { .. }
                        | HubError::Denied { .. }
                        | HubError::NotFound { .. }
                )
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

/// A store or a sweep or trial that is not there (or not readable as a
/// store), or a bad export format, is bad input; a failing query is not.
fn store_bad_input(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Missing { .. }
            | StoreError::TooNew { .. }
            | StoreError::Corrupt { .. }
            | StoreError::NoSweep { .. }
            | StoreError::AmbiguousSweep { .. }
            | StoreError::NoTrial { .. }
            | StoreError::AmbiguousTrial { .. }
            | StoreError::Empty
            | StoreError::Format(_)
    )
}

/// Checkpoint files that are missing, corrupt or do not fit are bad input;
/// a failure to quantise them is not.
fn weights_bad_input(error: &WeightError) -> bool {
    error.is_bad_input()
}

/// An adapter folder that is missing, unreadable, unsupported or does not
/// fit the model is bad input; libtorch failures are not.
fn adapter_bad_input(error: &PeftError) -> bool {
    crate::model::network::paligemma::adapter_is_bad_input(error)
}
