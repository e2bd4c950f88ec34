//! The declarative experiment spec: schema, embedded defaults, layered
//! loading with positioned errors, and static validation.
pub mod checkpoint;
pub mod error;
pub mod layers;
pub mod load;
pub mod schema;
pub mod validate;

/// The commented defaults, the lowest configuration layer.
pub const DEFAULTS_TOML: &str = include_str!("defaults.toml");

/// `data.path` values naming the built-in synthetic datasets.
pub const GENERATED_PREFIX: &str = "generated:";
