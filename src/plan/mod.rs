//! Plans: the TOML schema (`raw`), analysis into a checked `Plan` (`analyze`), the analyzed
//! model (`model`) and step ordering (`dag`). Nothing here talks to a cluster or runs a tool.

pub mod analyze;
pub mod dag;
pub mod model;
pub mod raw;
pub mod template;

pub use analyze::load;
pub use model::*;
