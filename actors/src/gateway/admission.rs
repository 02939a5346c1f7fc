//! Per-tenant admission: how many requests of one tenant the gateway works
//! on at once.
//!
//! The gateway's shared pool (`Limits::max_in_flight`) is back-pressure: when
//! it is full the subscription is not read. Without a per-tenant bound, one
//! tenant's slow requests (a hook that sleeps, a large parse) would fill it
//! and stall every other tenant. So each tenant has its own semaphore of
//! `TenantCaps::requests_in_flight` permits, taken before the shared one; a
//! tenant past its share gets `resource_exhausted` at once, and the shared
//! pool never waits on one tenant alone.
//!
//! # State
//! `slots`: tenant token → its semaphore. An entry is removed when its last
//! permit comes back, and at most [`MAX_TENANTS`] tenants have requests in
//! flight at once, so the map stays bounded even on an open bus where a
//! client can name any tenant.

use std::sync::Arc;

use cairn_schema::{ApiError, ErrorCode};
use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most tenants with requests in flight at once.
pub const MAX_TENANTS: usize = 4096;

pub struct TenantSlots {
    per_tenant: usize,
    slots: Arc<DashMap<String, Arc<Semaphore>>>,
}

/// A request's share of its tenant's slots; given back on drop.
pub struct TenantPermit {
    permit: Option<OwnedSemaphorePermit>,
    tenant: String,
    per_tenant: usize,
    slots: Arc<DashMap<String, Arc<Semaphore>>>,
}

impl TenantSlots {
    pub fn new(per_tenant: usize) -> TenantSlots {
        TenantSlots {
            per_tenant: per_tenant.max(1),
            slots: Arc::default(),
        }
    }

    /// Takes a slot for the tenant of a request subject
    /// (`cairn.v1.<tenant>.…`; a malformed subject counts under its third
    /// token, or the empty one, and fails later when it is parsed).
    pub fn acquire(&self, subject: &str) -> Result<TenantPermit, ApiError> {
        let token = subject.split('.').nth(2).unwrap_or("");
        let mut end = token.len().min(64);
        while !token.is_char_boundary(end) {
            end -= 1;
        }
        let tenant = &token[..end];
        if self.slots.len() >= MAX_TENANTS && !self.slots.contains_key(tenant) {
            return Err(ApiError::new(
                ErrorCode::ResourceExhausted,
                format!("{MAX_TENANTS} tenants have requests in flight; try again later"),
            ));
        }
        // Taken under the entry's lock, so a release that empties the
        // entry cannot remove it between the lookup and the take.
        let entry = self
            .slots
            .entry(tenant.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant)));
        let permit = entry.value().clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "tenant {tenant} has {} requests in flight, its limit; try again when some have finished",
                    self.per_tenant
                ),
            )
        })?;
        drop(entry);
        Ok(TenantPermit {
            permit: Some(permit),
            tenant: tenant.to_owned(),
            per_tenant: self.per_tenant,
            slots: self.slots.clone(),
        })
    }

    /// Tenants with requests in flight (for tests).
    pub fn tenants_in_flight(&self) -> usize {
        self.slots.len()
    }
}

impl Drop for TenantPermit {
    fn drop(&mut self) {
        drop(self.permit.take());
        let per_tenant = self.per_tenant;
        self.slots
            .remove_if(&self.tenant, |_, s| s.available_permits() == per_tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_tenant_past_its_share_is_refused_and_others_are_not() {
        let slots = TenantSlots::new(2);
        let a1 = slots.acquire("cairn.v1.evil.app.hook").unwrap();
        let _a2 = slots.acquire("cairn.v1.evil.app.hook").unwrap();
        let refused = slots.acquire("cairn.v1.evil.volume.list").err().unwrap();
        assert_eq!(refused.code, ErrorCode::ResourceExhausted);
        assert!(refused.message.contains("evil"), "{}", refused.message);
        let _b = slots.acquire("cairn.v1.acme.volume.list").unwrap();
        drop(a1);
        let _a3 = slots.acquire("cairn.v1.evil.volume.list").unwrap();
    }

    #[test]
    fn idle_tenants_leave_the_map() {
        let slots = TenantSlots::new(4);
        for i in 0..100 {
            let p = slots
                .acquire(&format!("cairn.v1.t{i}.volume.list"))
                .unwrap();
            drop(p);
        }
        assert_eq!(slots.tenants_in_flight(), 0);
        let held = slots.acquire("cairn.v1.t1.volume.list").unwrap();
        assert_eq!(slots.tenants_in_flight(), 1);
        drop(held);
        assert_eq!(slots.tenants_in_flight(), 0);
    }

    #[test]
    fn a_long_or_odd_subject_is_bounded() {
        let slots = TenantSlots::new(1);
        let long = format!("cairn.v1.{}.x.y", "é".repeat(100));
        let p = slots.acquire(&long).unwrap();
        assert_eq!(p.tenant.len(), 64);
        let _q = slots.acquire("nothing").unwrap();
    }
}
