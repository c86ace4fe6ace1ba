//! Who a client is and what it may do: connection and subscription tokens (JWT), and the
//! permissions they carry.
//!
//! Runs on: the main thread builds the [`Verifier`] once from the key bytes the
//! configuration read (`auth` reads no option and no file itself); shards then verify
//! tokens inline in the upgrade and in v1 `refresh`/`subscribe` commands. Pure: no I/O,
//! time passed in.
//!
//! Signatures, `exp` and `nbf` are checked by the `jsonwebtoken` crate; this module picks
//! the key by the configured algorithms, maps its errors to stable reasons (counted per
//! reason in `/healthz`), and turns the `channels` claim into [`Permissions`].

pub(crate) mod permissions;
pub(crate) mod token;

pub(crate) use permissions::Permissions;
pub(crate) use token::{AuthFailure, Identity, Verifier};
