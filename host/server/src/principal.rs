//! Who a call is for, in the words the daemon's parts share: the owner of what an id reaches
//! (a run, a bundle, a task, a session) and what a caller's bearer token grants within its
//! tenant. A principal is a tenant and, for an OAuth access token, its subject.

use crate::oauth::Scopes;
use crate::tenants::Tenant;
use std::sync::Arc;

/// Who owns state that an id reaches (a run, a bundle, a task): a tenant and, for what an OAuth
/// access token started, its subject within the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner<'a> {
    /// The tenant's name.
    pub(crate) tenant: &'a str,
    /// The subject (as recorded); `None` for the tenant's static token.
    pub(crate) subject: Option<&'a str>,
}

impl<'a> Owner<'a> {
    /// The owner a bundle's principal names: a subject equal to the tenant's name is the tenant's
    /// static token (access tokens with such a subject are refused).
    pub(crate) fn of_principal(principal: &'a guild_replay::Principal) -> Self {
        let subject = Some(principal.subject.as_str()).filter(|s| *s != principal.tenant);
        Self { tenant: &principal.tenant, subject }
    }
}

/// What the caller's bearer token grants within its tenant, and on whose behalf it calls.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bearer {
    /// The access token's subject, as recorded (`[oauth] subject_record`); `None` for a
    /// tenant's static token, whose subject is the tenant itself.
    pub(crate) subject: Option<String>,
    /// What the access token's scopes grant; `None` for a static token: all its tenant may.
    scopes: Option<Arc<Scopes>>,
}

impl Bearer {
    /// A tenant's static token (or stdio, which runs as one tenant).
    pub(crate) fn tenant_token() -> Self {
        Self::default()
    }

    /// A verified access token of `subject` (as recorded) granting `scopes`.
    pub(crate) fn access_token(subject: String, scopes: Arc<Scopes>) -> Self {
        Self { subject: Some(subject), scopes: Some(scopes) }
    }

    /// Whether its scopes let it call `tool` (its tenant's allow-list is checked apart).
    pub(crate) fn may_call(&self, tool: &str) -> bool {
        self.scopes.as_ref().is_none_or(|s| s.call(tool))
    }

    /// Whether state of `owner` is the caller's own: its tenant's, and for an access token, made
    /// by its own subject (a tenant's static token speaks for all of the tenant's subjects).
    pub(crate) fn owns(&self, caller: &Tenant, owner: Owner<'_>) -> bool {
        caller.name == owner.tenant && (self.subject.is_none() || self.subject.as_deref() == owner.subject)
    }

    /// Whether its scopes let it use the admin routes (its tenant must be an admin too).
    pub(crate) fn may_admin(&self) -> bool {
        self.scopes.as_ref().is_none_or(|s| s.admin())
    }
}
