//! The pair: keep-alives with their authentication, the role machine, epoch persistence and
//! registration sync (DESIGN "The pair protocol").

pub mod auth;
pub mod config_check;
pub mod dialoginfo;
pub mod digest;
pub mod epoch;
pub mod keepalive;
pub mod regsync;
pub mod role;

pub use role::{
    Action, Announced, PeerView, Role, RoleMachine, Settings, StepDownReason, TakeoverReason,
};
