//! Integration tests through a real kube-apiserver + etcd + kube-controller-manager (testenv),
//! with the operator running under its restricted RBAC identity.

mod controller;
mod gitops;
mod image;
mod install;
mod operations;
mod process;
mod shim;
mod support;
