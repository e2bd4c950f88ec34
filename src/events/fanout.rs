//! Fans the event stream out to its consumers, one thread each, so a slow
//! consumer (a store committing to disk) never holds up the scheduler, and
//! a failing one is reported and dropped without stopping the sweep.

use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use crate::events::event::{EventSink, SinkError, SweepEvent};

/// Most events handed to a consumer in one call.
const MAX_BATCH: usize = 4096;

/// The running consumers.
pub struct Fanout {
    senders: FanoutSender,
    threads: Vec<JoinHandle<Vec<SinkError>>>,
}

/// A handle that sends to every consumer, for work done off the
/// scheduler's loop; `Fanout::close` waits for every handle to be dropped.
#[derive(Clone)]
pub struct FanoutSender(Vec<Sender<SweepEvent>>);

impl FanoutSender {
    /// Hands `event` to every consumer (in order; a consumer that has
    /// failed drops it).
    pub fn send(&self, event: &SweepEvent) {
        for tx in &self.0 {
            let _ = tx.send(event.clone());
        }
    }
}

impl Fanout {
    pub fn start(sinks: Vec<Box<dyn EventSink>>) -> Self {
        let mut senders = Vec::with_capacity(sinks.len());
        let mut threads = Vec::with_capacity(sinks.len());
        for sink in sinks {
            let (tx, rx) = mpsc::channel();
            senders.push(tx);
            let name = format!("sink-{}", sink.name());
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn(move || consume(sink, &rx))
                .expect("cannot start a sink thread");
            threads.push(handle);
        }
        Fanout {
            senders: FanoutSender(senders),
            threads,
        }
    }

    /// Hands `event` to every consumer (in order; a consumer that has
    /// failed drops it).
    pub fn send(&self, event: &SweepEvent) {
        self.senders.send(event);
    }

    /// Another handle on the same consumers.
    pub fn sender(&self) -> FanoutSender {
        self.senders.clone()
    }

    /// Waits until every consumer has taken every event and closed; returns
    /// their errors.
    pub fn close(self) -> Vec<SinkError> {
        drop(self.senders);
        self.threads
            .into_iter()
            .flat_map(|t| {
                t.join().unwrap_or_else(|_| {
                    vec![SinkError {
                        sink: "sink",
                        message: "a consumer thread panicked".into(),
                    }]
                })
            })
            .collect()
    }
}

fn consume(mut sink: Box<dyn EventSink>, rx: &Receiver<SweepEvent>) -> Vec<SinkError> {
    let mut errors = Vec::new();
    let mut failed = false;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        if failed {
            continue;
        }
        if let Err(e) = sink.handle(&batch) {
            eprintln!("palisweep: {e}; this consumer gets no further events");
            errors.push(e);
            failed = true;
        }
    }
    if !failed && let Err(e) = sink.close() {
        errors.push(e);
    }
    errors
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::events::event::{Counts, SweepStatus};

    struct Collect(Arc<Mutex<Vec<usize>>>, bool);

    impl EventSink for Collect {
        fn name(&self) -> &'static str {
            "collect"
        }
        fn handle(&mut self, events: &[SweepEvent]) -> Result<(), SinkError> {
            if self.1 {
                return Err(SinkError {
                    sink: "collect",
                    message: "broken".into(),
                });
            }
            self.0.lock().unwrap().push(events.len());
            Ok(())
        }
    }

    fn ended() -> SweepEvent {
        SweepEvent::SweepEnded {
            status: SweepStatus::Finished,
            counts: Counts::default(),
            time: 0.0,
        }
    }

    #[test]
    fn every_event_reaches_every_consumer_and_a_broken_one_is_dropped() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let fanout = Fanout::start(vec![
            Box::new(Collect(Arc::clone(&seen), false)),
            Box::new(Collect(Arc::new(Mutex::new(Vec::new())), true)),
        ]);
        for _ in 0..1000 {
            fanout.send(&ended());
        }
        let errors = fanout.close();
        assert_eq!(seen.lock().unwrap().iter().sum::<usize>(), 1000);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("broken"));
    }
}
