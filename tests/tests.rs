//! End-to-end tests: the real `shoal` binary, real QUIC on loopback, port 0 everywhere.
//! One test binary links once; each scenario file is a module.

#![allow(unreachable_pub)]

mod support;

mod bad_input;
mod config_file;
mod dashboard;
mod exposition;
mod faults;
mod fetch_hostile;
mod hostile_peer;
mod limits;
mod links;
mod local;
mod manage;
mod metrics;
mod offline;
mod readme;
mod regions;
mod replicas;
mod service;
mod storage;
mod storage_auth;
mod swarm;
mod tracker_trust;
mod transfer;
mod webdriver;
