//! `palisweep run`: the scheduler. The dispatcher owns the queue, the
//! devices and the running workers; the executor starts and watches worker
//! processes; every consumer (store, TensorBoard, progress) sees only the
//! [`event::SweepEvent`] stream, through [`sinks::Fanout`].
pub mod event;
pub mod sinks;
