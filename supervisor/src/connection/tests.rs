//! Tests of the connection machine on a virtual clock.
use super::*;
