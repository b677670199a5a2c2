//! One module per subcommand, and how they print.

pub mod backup;
pub mod compact;
pub mod inspect;
mod output;
pub mod restore;
pub mod serve;
