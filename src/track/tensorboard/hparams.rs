//! The hparams plugin's data: the experiment (which hyperparameters and
//! metrics the dashboard shows) and, per session (a trial's run), its start
//! (the hyperparameter values) and end (the status).
//!
//! Each is an `HParamsPluginData` message in the `plugin_data.content` of a
//! summary with a fixed tag. Field numbers from
//! `tensorboard/plugins/hparams/{api,plugin_data}.proto` and
//! `google/protobuf/struct.proto`.

use std::collections::BTreeMap;

use super::summary::Event;
use super::wire::{self, DecodeError, Message};

pub const PLUGIN_NAME: &str = "hparams";
/// `PLUGIN_DATA_VERSION` in `tensorboard/plugins/hparams/metadata.py`.
pub const PLUGIN_DATA_VERSION: u64 = 0;
pub const EXPERIMENT_TAG: &str = "_hparams_/experiment";
pub const SESSION_START_INFO_TAG: &str = "_hparams_/session_start_info";
pub const SESSION_END_INFO_TAG: &str = "_hparams_/session_end_info";

/// A numeric axis with more distinct values than this gets an interval
/// domain (a range filter) instead of a list of values (checkboxes).
const MAX_DISCRETE_NUMBERS: usize = 16;

// HParamsPluginData
const DATA_VERSION: u32 = 1;
const DATA_EXPERIMENT: u32 = 2;
const DATA_SESSION_START: u32 = 3;
const DATA_SESSION_END: u32 = 4;
// Experiment
const EXP_DESCRIPTION: u32 = 1;
const EXP_TIME_CREATED: u32 = 3;
const EXP_HPARAM_INFOS: u32 = 4;
const EXP_METRIC_INFOS: u32 = 5;
const EXP_NAME: u32 = 6;
// HParamInfo
const HPARAM_NAME: u32 = 1;
const HPARAM_TYPE: u32 = 4;
const HPARAM_DISCRETE: u32 = 5;
const HPARAM_INTERVAL: u32 = 6;
const HPARAM_DIFFERS: u32 = 7;
// Interval
const INTERVAL_MIN: u32 = 1;
const INTERVAL_MAX: u32 = 2;
// MetricInfo, MetricName
const METRIC_NAME: u32 = 1;
const METRIC_DATASET_TYPE: u32 = 5;
const METRIC_NAME_GROUP: u32 = 1;
const METRIC_NAME_TAG: u32 = 2;
// SessionStartInfo (and its map entries)
const START_HPARAMS: u32 = 1;
const START_GROUP_NAME: u32 = 4;
const START_TIME: u32 = 5;
const MAP_KEY: u32 = 1;
const MAP_VALUE: u32 = 2;
// SessionEndInfo
const END_STATUS: u32 = 1;
const END_TIME: u32 = 2;
// google.protobuf.Value, ListValue
const VALUE_NUMBER: u32 = 2;
const VALUE_STRING: u32 = 3;
const VALUE_BOOL: u32 = 4;
const LIST_VALUES: u32 = 1;

/// A hyperparameter's value, as the plugin takes them (scalars only).
#[derive(Clone, Debug, PartialEq)]
pub enum HParamValue {
    Number(f64),
    String(String),
    Bool(bool),
}

impl HParamValue {
    /// The values of one hyperparameter across trials, of one type: numbers,
    /// booleans or strings as they are when all are of that kind, and
    /// otherwise every value as a string (JSON text for all but strings), as
    /// the plugin itself does with mixed types. Lists and tables become their
    /// JSON text too.
    pub fn column(values: &[&serde_json::Value]) -> Vec<HParamValue> {
        use serde_json::Value as J;
        let numbers = values.iter().all(|v| v.is_number());
        let bools = values.iter().all(|v| v.is_boolean());
        values
            .iter()
            .map(|v| match v {
                J::Number(n) if numbers => HParamValue::Number(n.as_f64().unwrap_or(f64::NAN)),
                J::Bool(b) if bools => HParamValue::Bool(*b),
                J::String(s) => HParamValue::String(s.clone()),
                other => HParamValue::String(other.to_string()),
            })
            .collect()
    }

    fn data_type(&self) -> DataType {
        match self {
            HParamValue::Number(_) => DataType::Float64,
            HParamValue::String(_) => DataType::String,
            HParamValue::Bool(_) => DataType::Bool,
        }
    }

    fn encode(&self) -> Message {
        match self {
            HParamValue::Number(x) => Message::new().double(VALUE_NUMBER, *x),
            HParamValue::String(s) => Message::new().string(VALUE_STRING, s),
            HParamValue::Bool(b) => Message::new().bool(VALUE_BOOL, *b),
        }
    }

    fn decode(bytes: &[u8]) -> Result<Option<Self>, DecodeError> {
        let mut out = None;
        for field in wire::fields(bytes) {
            let (n, v) = field?;
            out = match n {
                VALUE_NUMBER => Some(HParamValue::Number(v.as_f64(n)?)),
                VALUE_STRING => Some(HParamValue::String(v.as_str(n)?.to_owned())),
                VALUE_BOOL => Some(HParamValue::Bool(v.as_u64(n)? != 0)),
                _ => out,
            };
        }
        Ok(out)
    }

    fn sort_key(&self) -> (u8, f64, &str) {
        match self {
            HParamValue::Bool(b) => (0, f64::from(u8::from(*b)), ""),
            HParamValue::Number(x) => (1, *x, ""),
            HParamValue::String(s) => (2, 0.0, s),
        }
    }
}

/// `tensorboard.hparams.DataType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    Unset = 0,
    String = 1,
    Bool = 2,
    Float64 = 3,
}

impl DataType {
    fn from_number(n: u64) -> Self {
        match n {
            1 => DataType::String,
            2 => DataType::Bool,
            3 => DataType::Float64,
            _ => DataType::Unset,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Domain {
    /// The values the trials take, sorted.
    Discrete(Vec<HParamValue>),
    Interval {
        min: f64,
        max: f64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct HParamInfo {
    /// The dotted key (`train.lr`).
    pub name: String,
    pub data_type: DataType,
    pub domain: Option<Domain>,
    /// Whether the trials take more than one value.
    pub differs: bool,
}

impl HParamInfo {
    /// The info of a hyperparameter from the values the trials take (one
    /// [`HParamValue::column`]): strings and booleans get their values as a
    /// discrete domain, numbers too unless there are more than a handful,
    /// in which case their range.
    pub fn from_values(name: &str, values: &[HParamValue]) -> Self {
        let mut distinct: Vec<HParamValue> = Vec::new();
        for v in values {
            if !distinct.contains(v) {
                distinct.push(v.clone());
            }
        }
        distinct.sort_by(|a, b| {
            let (ka, kb) = (a.sort_key(), b.sort_key());
            ka.0.cmp(&kb.0)
                .then(ka.1.total_cmp(&kb.1))
                .then(ka.2.cmp(kb.2))
        });
        let data_type = distinct
            .first()
            .map_or(DataType::Unset, HParamValue::data_type);
        let differs = distinct.len() > 1;
        let domain = match data_type {
            DataType::Unset => None,
            DataType::Float64 if distinct.len() > MAX_DISCRETE_NUMBERS => {
                let numbers = distinct.iter().filter_map(|v| match v {
                    HParamValue::Number(x) => Some(*x),
                    _ => None,
                });
                let (min, max) = numbers.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                    (lo.min(x), hi.max(x))
                });
                Some(Domain::Interval { min, max })
            }
            _ => Some(Domain::Discrete(distinct)),
        };
        HParamInfo {
            name: name.to_owned(),
            data_type,
            domain,
            differs,
        }
    }

    fn encode(&self) -> Message {
        let mut info = Message::new()
            .string(HPARAM_NAME, &self.name)
            .varint(HPARAM_TYPE, self.data_type as u64);
        match &self.domain {
            Some(Domain::Discrete(values)) => {
                let list = values.iter().fold(Message::new(), |list, v| {
                    list.message(LIST_VALUES, &v.encode())
                });
                info = info.message(HPARAM_DISCRETE, &list);
            }
            Some(Domain::Interval { min, max }) => {
                let interval = Message::new()
                    .double(INTERVAL_MIN, *min)
                    .double(INTERVAL_MAX, *max);
                info = info.message(HPARAM_INTERVAL, &interval);
            }
            None => {}
        }
        info.bool(HPARAM_DIFFERS, self.differs)
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut out = HParamInfo {
            name: String::new(),
            data_type: DataType::Unset,
            domain: None,
            differs: false,
        };
        for field in wire::fields(bytes) {
            let (n, v) = field?;
            match n {
                HPARAM_NAME => v.as_str(n)?.clone_into(&mut out.name),
                HPARAM_TYPE => out.data_type = DataType::from_number(v.as_u64(n)?),
                HPARAM_DISCRETE => {
                    let mut values = Vec::new();
                    for field in wire::fields(v.as_bytes(n)?) {
                        let (n, v) = field?;
                        if n == LIST_VALUES
                            && let Some(value) = HParamValue::decode(v.as_bytes(n)?)?
                        {
                            values.push(value);
                        }
                    }
                    out.domain = Some(Domain::Discrete(values));
                }
                HPARAM_INTERVAL => {
                    let (mut min, mut max) = (0.0, 0.0);
                    for field in wire::fields(v.as_bytes(n)?) {
                        let (n, v) = field?;
                        match n {
                            INTERVAL_MIN => min = v.as_f64(n)?,
                            INTERVAL_MAX => max = v.as_f64(n)?,
                            _ => {}
                        }
                    }
                    out.domain = Some(Domain::Interval { min, max });
                }
                HPARAM_DIFFERS => out.differs = v.as_u64(n)? != 0,
                _ => {}
            }
        }
        Ok(out)
    }
}

/// `tensorboard.hparams.DatasetType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetType {
    Unknown = 0,
    Training = 1,
    Validation = 2,
}

/// A metric column: the scalar `tag` in the session's run (`group` is a
/// subfolder of it; palisweep leaves it empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricInfo {
    pub group: String,
    pub tag: String,
    pub dataset_type: DatasetType,
}

impl MetricInfo {
    /// A metric of the trial's own run, its dataset type from its prefix
    /// (`train/` training, `val/` validation).
    pub fn for_tag(tag: &str) -> Self {
        let dataset_type = if tag.starts_with("train/") {
            DatasetType::Training
        } else if tag.starts_with("val/") {
            DatasetType::Validation
        } else {
            DatasetType::Unknown
        };
        MetricInfo {
            group: String::new(),
            tag: tag.to_owned(),
            dataset_type,
        }
    }

    fn encode(&self) -> Message {
        let name = Message::new()
            .string(METRIC_NAME_GROUP, &self.group)
            .string(METRIC_NAME_TAG, &self.tag);
        Message::new()
            .message(METRIC_NAME, &name)
            .varint(METRIC_DATASET_TYPE, self.dataset_type as u64)
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut out = MetricInfo::for_tag("");
        for field in wire::fields(bytes) {
            let (n, v) = field?;
            match n {
                METRIC_NAME => {
                    for field in wire::fields(v.as_bytes(n)?) {
                        let (n, v) = field?;
                        match n {
                            METRIC_NAME_GROUP => v.as_str(n)?.clone_into(&mut out.group),
                            METRIC_NAME_TAG => v.as_str(n)?.clone_into(&mut out.tag),
                            _ => {}
                        }
                    }
                }
                METRIC_DATASET_TYPE => {
                    out.dataset_type = match v.as_u64(n)? {
                        1 => DatasetType::Training,
                        2 => DatasetType::Validation,
                        _ => DatasetType::Unknown,
                    };
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// What the dashboard's table shows: the hyperparameter and metric columns.
#[derive(Clone, Debug, PartialEq)]
pub struct Experiment {
    pub name: String,
    pub description: String,
    pub time_created_secs: f64,
    pub hparams: Vec<HParamInfo>,
    pub metrics: Vec<MetricInfo>,
}

/// A session's (trial's) hyperparameters.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionStart {
    pub hparams: BTreeMap<String, HParamValue>,
    /// Sessions of one group are aggregated; palisweep uses the trial id.
    pub group_name: String,
    pub start_time_secs: f64,
}

/// `tensorboard.hparams.Status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Unknown = 0,
    Success = 1,
    Failure = 2,
    Running = 3,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SessionEnd {
    pub status: Status,
    pub end_time_secs: f64,
}

/// `HParamsPluginData`: one of the three summaries.
#[derive(Clone, Debug, PartialEq)]
pub enum PluginData {
    Experiment(Experiment),
    SessionStart(SessionStart),
    SessionEnd(SessionEnd),
}

impl PluginData {
    /// The summary tag this data is written under.
    pub fn tag(&self) -> &'static str {
        match self {
            PluginData::Experiment(_) => EXPERIMENT_TAG,
            PluginData::SessionStart(_) => SESSION_START_INFO_TAG,
            PluginData::SessionEnd(_) => SESSION_END_INFO_TAG,
        }
    }

    /// The summary event that carries this data.
    pub fn event(&self, wall_time: f64) -> Event {
        Event::plugin(wall_time, 0, self.tag(), PLUGIN_NAME, self.encode())
    }

    pub fn encode(&self) -> Vec<u8> {
        let data = Message::new().varint(DATA_VERSION, PLUGIN_DATA_VERSION);
        match self {
            PluginData::Experiment(e) => {
                let mut exp = Message::new()
                    .string(EXP_NAME, &e.name)
                    .string(EXP_DESCRIPTION, &e.description)
                    .double(EXP_TIME_CREATED, e.time_created_secs);
                for h in &e.hparams {
                    exp = exp.message(EXP_HPARAM_INFOS, &h.encode());
                }
                for m in &e.metrics {
                    exp = exp.message(EXP_METRIC_INFOS, &m.encode());
                }
                data.message(DATA_EXPERIMENT, &exp)
            }
            PluginData::SessionStart(s) => {
                let mut start = Message::new();
                for (name, value) in &s.hparams {
                    let entry = Message::new()
                        .string(MAP_KEY, name)
                        .message(MAP_VALUE, &value.encode());
                    start = start.message(START_HPARAMS, &entry);
                }
                let start = start
                    .string(START_GROUP_NAME, &s.group_name)
                    .double(START_TIME, s.start_time_secs);
                data.message(DATA_SESSION_START, &start)
            }
            PluginData::SessionEnd(s) => {
                let end = Message::new()
                    .varint(END_STATUS, s.status as u64)
                    .double(END_TIME, s.end_time_secs);
                data.message(DATA_SESSION_END, &end)
            }
        }
        .into_bytes()
    }

    /// Decodes `HParamsPluginData` bytes; a message of another version or
    /// with none of the three set is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut version = 0;
        let mut data = None;
        for field in wire::fields(bytes) {
            let (n, v) = field?;
            match n {
                DATA_VERSION => version = v.as_u64(n)?,
                DATA_EXPERIMENT => data = Some(decode_experiment(v.as_bytes(n)?)?),
                DATA_SESSION_START => data = Some(decode_session_start(v.as_bytes(n)?)?),
                DATA_SESSION_END => data = Some(decode_session_end(v.as_bytes(n)?)?),
                _ => {}
            }
        }
        if version != PLUGIN_DATA_VERSION {
            return Err(DecodeError::Unexpected {
                field: DATA_VERSION,
                expected: "plugin data version 0",
            });
        }
        data.ok_or(DecodeError::Unexpected {
            field: DATA_EXPERIMENT,
            expected: "an experiment or a session start or end",
        })
    }
}

fn decode_experiment(bytes: &[u8]) -> Result<PluginData, DecodeError> {
    let mut e = Experiment {
        name: String::new(),
        description: String::new(),
        time_created_secs: 0.0,
        hparams: Vec::new(),
        metrics: Vec::new(),
    };
    for field in wire::fields(bytes) {
        let (n, v) = field?;
        match n {
            EXP_NAME => v.as_str(n)?.clone_into(&mut e.name),
            EXP_DESCRIPTION => v.as_str(n)?.clone_into(&mut e.description),
            EXP_TIME_CREATED => e.time_created_secs = v.as_f64(n)?,
            EXP_HPARAM_INFOS => e.hparams.push(HParamInfo::decode(v.as_bytes(n)?)?),
            EXP_METRIC_INFOS => e.metrics.push(MetricInfo::decode(v.as_bytes(n)?)?),
            _ => {}
        }
    }
    Ok(PluginData::Experiment(e))
}

fn decode_session_start(bytes: &[u8]) -> Result<PluginData, DecodeError> {
    let mut s = SessionStart {
        hparams: BTreeMap::new(),
        group_name: String::new(),
        start_time_secs: 0.0,
    };
    for field in wire::fields(bytes) {
        let (n, v) = field?;
        match n {
            START_HPARAMS => {
                let (mut key, mut value) = (String::new(), None);
                for field in wire::fields(v.as_bytes(n)?) {
                    let (n, v) = field?;
                    match n {
                        MAP_KEY => v.as_str(n)?.clone_into(&mut key),
                        MAP_VALUE => value = HParamValue::decode(v.as_bytes(n)?)?,
                        _ => {}
                    }
                }
                if let Some(value) = value {
                    s.hparams.insert(key, value);
                }
            }
            START_GROUP_NAME => v.as_str(n)?.clone_into(&mut s.group_name),
            START_TIME => s.start_time_secs = v.as_f64(n)?,
            _ => {}
        }
    }
    Ok(PluginData::SessionStart(s))
}

fn decode_session_end(bytes: &[u8]) -> Result<PluginData, DecodeError> {
    let mut s = SessionEnd {
        status: Status::Unknown,
        end_time_secs: 0.0,
    };
    for field in wire::fields(bytes) {
        let (n, v) = field?;
        match n {
            END_STATUS => {
                s.status = match v.as_u64(n)? {
                    1 => Status::Success,
                    2 => Status::Failure,
                    3 => Status::Running,
                    _ => Status::Unknown,
                };
            }
            END_TIME => s.end_time_secs = v.as_f64(n)?,
            _ => {}
        }
    }
    Ok(PluginData::SessionEnd(s))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn columns_keep_one_type() {
        let (a, b, c) = (json!(0.0001), json!(3e-4), json!("auto"));
        assert_eq!(
            HParamValue::column(&[&a, &b]),
            vec![HParamValue::Number(0.0001), HParamValue::Number(3e-4)]
        );
        assert_eq!(
            HParamValue::column(&[&a, &c]),
            vec![
                HParamValue::String("0.0001".into()),
                HParamValue::String("auto".into())
            ]
        );
        let list = json!(["q_proj", "v_proj"]);
        assert_eq!(
            HParamValue::column(&[&list]),
            vec![HParamValue::String(r#"["q_proj","v_proj"]"#.into())]
        );
    }

    #[test]
    fn domains_are_discrete_for_a_grid_and_a_range_for_many_numbers() {
        let grid = [3e-4, 1e-4, 3e-4].map(HParamValue::Number);
        let info = HParamInfo::from_values("train.lr", &grid);
        assert_eq!(info.data_type, DataType::Float64);
        assert!(info.differs);
        assert_eq!(
            info.domain,
            Some(Domain::Discrete(vec![
                HParamValue::Number(1e-4),
                HParamValue::Number(3e-4)
            ]))
        );
        let many: Vec<_> = (0..40).map(|i| HParamValue::Number(f64::from(i))).collect();
        assert_eq!(
            HParamInfo::from_values("seed", &many).domain,
            Some(Domain::Interval {
                min: 0.0,
                max: 39.0
            })
        );
        let same = [HParamValue::Bool(true), HParamValue::Bool(true)];
        assert!(!HParamInfo::from_values("b", &same).differs);
    }

    #[test]
    fn plugin_data_round_trips() {
        let experiment = PluginData::Experiment(Experiment {
            name: "demo".into(),
            description: "d".into(),
            time_created_secs: 12.5,
            hparams: vec![
                HParamInfo::from_values(
                    "lora.r",
                    &[HParamValue::Number(8.0), HParamValue::Number(0.0)],
                ),
                HParamInfo::from_values(
                    "train.quant",
                    &[
                        HParamValue::String("nf4".into()),
                        HParamValue::String(String::new()),
                    ],
                ),
                HParamInfo::from_values("x", &[HParamValue::Bool(false)]),
            ],
            metrics: vec![
                MetricInfo::for_tag("val/field_f1"),
                MetricInfo::for_tag("train/loss"),
            ],
        });
        let start = PluginData::SessionStart(SessionStart {
            hparams: BTreeMap::from([
                ("lora.r".to_owned(), HParamValue::Number(0.0)),
                ("b".to_owned(), HParamValue::Bool(false)),
                ("s".to_owned(), HParamValue::String(String::new())),
            ]),
            group_name: "0123456789ab".into(),
            start_time_secs: 1.0,
        });
        let end = PluginData::SessionEnd(SessionEnd {
            status: Status::Failure,
            end_time_secs: 2.0,
        });
        for data in [experiment, start, end] {
            assert_eq!(PluginData::decode(&data.encode()).unwrap(), data);
        }
    }

    #[test]
    fn session_end_encoding_matches_protobuf() {
        // HParamsPluginData{version: 0, session_end_info{status: SUCCESS, end_time_secs: 0}},
        // as python's SerializeToString writes it apart from the explicit zeros.
        let bytes = PluginData::SessionEnd(SessionEnd {
            status: Status::Success,
            end_time_secs: 0.0,
        })
        .encode();
        let mut expected = vec![0x08, 0x00, 0x22, 0x0b, 0x08, 0x01, 0x11];
        expected.extend_from_slice(&[0; 8]);
        assert_eq!(bytes, expected);
    }
}
