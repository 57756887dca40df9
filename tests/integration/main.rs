//! Integration tests through a real kube-apiserver + etcd + kube-controller-manager (testenv),
//! with the operator running under its restricted RBAC identity.

mod controller;
mod cost;
mod gitops;
mod hardening;
mod image;
mod install;
mod issued;
mod kms;
#[path = "../common/kms.rs"]
mod local_kms;
mod operations;
mod process;
mod revocation;
mod rotation;
mod shim;
#[path = "../common/signer.rs"]
mod signer;
mod support;
mod workload_identity;
