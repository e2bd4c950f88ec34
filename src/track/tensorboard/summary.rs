//! TensorBoard's `Event` and `Summary` messages, as far as palisweep writes
//! and reads them: the file-version header, scalars as `simple_value`, and
//! plugin summaries (metadata with a plugin's bytes and a null tensor).
//!
//! Field numbers from `tensorboard/compat/proto/{event,summary,tensor,
//! tensor_shape}.proto`.

use super::wire::{self, DecodeError, Message};

/// The first event of every file.
pub const FILE_VERSION: &str = "brain.Event:2";

// Event
const EVENT_WALL_TIME: u32 = 1;
const EVENT_STEP: u32 = 2;
const EVENT_FILE_VERSION: u32 = 3;
const EVENT_SUMMARY: u32 = 5;
// Summary
const SUMMARY_VALUE: u32 = 1;
// Summary.Value
const VALUE_TAG: u32 = 1;
const VALUE_SIMPLE: u32 = 2;
const VALUE_TENSOR: u32 = 8;
const VALUE_METADATA: u32 = 9;
// SummaryMetadata and its PluginData
const METADATA_PLUGIN_DATA: u32 = 1;
const PLUGIN_NAME: u32 = 1;
const PLUGIN_CONTENT: u32 = 2;
// TensorProto, TensorShapeProto
const TENSOR_DTYPE: u32 = 1;
const TENSOR_SHAPE: u32 = 2;
const SHAPE_DIM: u32 = 2;
const DT_FLOAT: u64 = 1;

/// One record of an event file.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub wall_time: f64,
    pub step: i64,
    pub what: What,
}

#[derive(Clone, Debug, PartialEq)]
pub enum What {
    FileVersion(String),
    Summary(Vec<Value>),
    /// A member this module does not decode (a graph, a session log, …).
    Other,
}

/// One `Summary.Value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub tag: String,
    /// `metadata.plugin_data`, when set.
    pub plugin: Option<PluginData>,
    pub kind: ValueKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginData {
    pub name: String,
    pub content: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ValueKind {
    Simple(f32),
    /// An encoded `TensorProto`.
    Tensor(Vec<u8>),
    /// No value, or one this module does not decode (an image, a histogram).
    Other,
}

impl Event {
    pub fn file_version(wall_time: f64) -> Self {
        Event {
            wall_time,
            step: 0,
            what: What::FileVersion(FILE_VERSION.to_owned()),
        }
    }

    /// Scalars as `simple_value`s (a float32, as TensorBoard stores them),
    /// all in one summary.
    pub fn scalars<'a>(
        wall_time: f64,
        step: i64,
        values: impl IntoIterator<Item = (&'a str, f64)>,
    ) -> Self {
        let values = values
            .into_iter()
            .map(|(tag, value)| Value {
                tag: tag.to_owned(),
                plugin: None,
                kind: ValueKind::Simple(value as f32),
            })
            .collect();
        Event {
            wall_time,
            step,
            what: What::Summary(values),
        }
    }

    /// A plugin summary the way TensorBoard's own writers make one: the
    /// plugin's bytes in the metadata and, as the value, a null tensor (an
    /// empty float vector, `tensorboard.plugins.hparams.metadata.NULL_TENSOR`).
    pub fn plugin(wall_time: f64, step: i64, tag: &str, plugin: &str, content: Vec<u8>) -> Self {
        let null_tensor = Message::new()
            .varint(TENSOR_DTYPE, DT_FLOAT)
            .message(
                TENSOR_SHAPE,
                &Message::new().message(SHAPE_DIM, &Message::new()),
            )
            .into_bytes();
        Event {
            wall_time,
            step,
            what: What::Summary(vec![Value {
                tag: tag.to_owned(),
                plugin: Some(PluginData {
                    name: plugin.to_owned(),
                    content,
                }),
                kind: ValueKind::Tensor(null_tensor),
            }]),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut event = Message::new()
            .double(EVENT_WALL_TIME, self.wall_time)
            .int64(EVENT_STEP, self.step);
        match &self.what {
            What::FileVersion(version) => event = event.string(EVENT_FILE_VERSION, version),
            What::Summary(values) => {
                let summary = values.iter().fold(Message::new(), |summary, value| {
                    summary.message(SUMMARY_VALUE, &value.encode())
                });
                event = event.message(EVENT_SUMMARY, &summary);
            }
            What::Other => {}
        }
        event.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut event = Event {
            wall_time: 0.0,
            step: 0,
            what: What::Other,
        };
        for field in wire::fields(bytes) {
            let (number, value) = field?;
            match number {
                EVENT_WALL_TIME => event.wall_time = value.as_f64(number)?,
                EVENT_STEP => event.step = value.as_u64(number)?.cast_signed(),
                EVENT_FILE_VERSION => {
                    event.what = What::FileVersion(value.as_str(number)?.to_owned());
                }
                EVENT_SUMMARY => {
                    let mut values = Vec::new();
                    for field in wire::fields(value.as_bytes(number)?) {
                        let (n, v) = field?;
                        if n == SUMMARY_VALUE {
                            values.push(Value::decode(v.as_bytes(n)?)?);
                        }
                    }
                    event.what = What::Summary(values);
                }
                _ => {}
            }
        }
        Ok(event)
    }
}

impl Value {
    fn encode(&self) -> Message {
        let mut value = Message::new().string(VALUE_TAG, &self.tag);
        if let Some(plugin) = &self.plugin {
            let data = Message::new()
                .string(PLUGIN_NAME, &plugin.name)
                .bytes(PLUGIN_CONTENT, &plugin.content);
            value = value.message(
                VALUE_METADATA,
                &Message::new().message(METADATA_PLUGIN_DATA, &data),
            );
        }
        match &self.kind {
            ValueKind::Simple(x) => value.float(VALUE_SIMPLE, *x),
            ValueKind::Tensor(tensor) => value.bytes(VALUE_TENSOR, tensor),
            ValueKind::Other => value,
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut out = Value {
            tag: String::new(),
            plugin: None,
            kind: ValueKind::Other,
        };
        for field in wire::fields(bytes) {
            let (number, value) = field?;
            match number {
                VALUE_TAG => value.as_str(number)?.clone_into(&mut out.tag),
                VALUE_SIMPLE => out.kind = ValueKind::Simple(value.as_f32(number)?),
                VALUE_TENSOR => out.kind = ValueKind::Tensor(value.as_bytes(number)?.to_vec()),
                VALUE_METADATA => {
                    for field in wire::fields(value.as_bytes(number)?) {
                        let (n, v) = field?;
                        if n == METADATA_PLUGIN_DATA {
                            out.plugin = Some(PluginData::decode(v.as_bytes(n)?)?);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

impl PluginData {
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut out = PluginData {
            name: String::new(),
            content: Vec::new(),
        };
        for field in wire::fields(bytes) {
            let (number, value) = field?;
            match number {
                PLUGIN_NAME => value.as_str(number)?.clone_into(&mut out.name),
                PLUGIN_CONTENT => out.content = value.as_bytes(number)?.to_vec(),
                _ => {}
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        for event in [
            Event::file_version(1.5),
            Event::scalars(2.0, 7, [("train/loss", 0.0), ("val/field_f1", 0.75)]),
            Event::plugin(3.0, 0, "_hparams_/experiment", "hparams", vec![1, 2, 3]),
        ] {
            assert_eq!(Event::decode(&event.encode()).unwrap(), event);
        }
    }

    #[test]
    fn the_null_tensor_is_the_six_bytes_tensorboard_writes() {
        let event = Event::plugin(0.0, 0, "t", "p", Vec::new());
        let What::Summary(values) = event.what else {
            panic!()
        };
        assert_eq!(
            values[0].kind,
            ValueKind::Tensor(vec![0x08, 0x01, 0x12, 0x02, 0x12, 0x00])
        );
    }
}
