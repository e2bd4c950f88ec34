//! The one event stream of a sweep: the scheduler produces [`event::SweepEvent`]s,
//! and every consumer (the store, TensorBoard, the progress display, under
//! `track/`) receives them through [`fanout::Fanout`]. The scheduler and its
//! consumers both import this module and never each other.
pub mod event;
pub mod fanout;
