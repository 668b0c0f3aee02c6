//! Pure builders: a GracefulService's spec in, the desired child objects out.
//!
//! Each builder returns the complete object the operator applies with server-side apply; fields it
//! leaves out are fields the operator does not own.

pub mod deployment;
pub mod overlay;
pub mod pdb;
pub mod pod;
pub mod service;
pub mod sidecar;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::crd::{GracefulService, common_labels};
use crate::error::Error;

/// Identity of the GracefulService that owns the objects being built.
#[derive(Clone, Debug, PartialEq)]
pub struct Owner {
    /// Name shared by the GracefulService and its children.
    pub name: String,
    /// Namespace of all of them.
    pub namespace: String,
    /// Controller owner reference, so deleting the GracefulService garbage-collects the children.
    pub reference: OwnerReference,
}

impl Owner {
    /// Reads the owner's identity from a stored GracefulService.
    pub fn of(gsvc: &GracefulService) -> Result<Self, Error> {
        use kube::Resource;
        let name = gsvc
            .meta()
            .name
            .clone()
            .ok_or(Error::MissingField("metadata.name"))?;
        let namespace = gsvc
            .meta()
            .namespace
            .clone()
            .ok_or(Error::MissingField("metadata.namespace"))?;
        let mut reference = gsvc
            .controller_owner_ref(&())
            .ok_or(Error::MissingField("metadata.uid"))?;
        // Foreground deletion of the GracefulService waits for its children. Setting it needs
        // `update` on gracefulservices/finalizers where OwnerReferencesPermissionEnforcement runs.
        reference.block_owner_deletion = Some(true);
        Ok(Self {
            name,
            namespace,
            reference,
        })
    }

    /// This owner with the reference exactly as `live` (a child it controls) already records it.
    /// A child created before the operator set `blockOwnerDeletion` keeps its reference as it is:
    /// changing an owner reference needs `delete` on the child where
    /// OwnerReferencesPermissionEnforcement runs, which the operator does not have.
    pub fn as_recorded_in(&self, live: Option<&ObjectMeta>) -> Self {
        let recorded = live
            .and_then(|meta| meta.owner_references.as_ref())
            .and_then(|refs| refs.iter().find(|r| r.uid == self.reference.uid));
        let mut owner = self.clone();
        if let Some(recorded) = recorded {
            owner.reference.block_owner_deletion = recorded.block_owner_deletion;
        }
        owner
    }

    /// Metadata every child gets: same name, namespace, common labels, owner reference.
    pub fn child_meta(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            labels: Some(common_labels(&self.name)),
            owner_references: Some(vec![self.reference.clone()]),
            ..ObjectMeta::default()
        }
    }
}

#[cfg(test)]
pub(crate) fn test_owner(name: &str) -> Owner {
    Owner {
        name: name.to_string(),
        namespace: "ns".to_string(),
        reference: OwnerReference {
            api_version: "graceful.dev/v1alpha1".to_string(),
            kind: "GracefulService".to_string(),
            name: name.to_string(),
            uid: "uid-1".to_string(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        },
    }
}
