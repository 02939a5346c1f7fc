//! The registry: where to find the actor of each aggregate. A dashmap from
//! `(tenant, volume)` to the actor's address. Actors are started lazily (on
//! the first command for a name) or at start-up from the journal.

use actix::prelude::*;
use cairn_schema::VolumeState;
use dashmap::DashMap;

use crate::services::Services;
use crate::volume::VolumeActor;

#[derive(Default)]
pub struct Registry {
    volumes: DashMap<(String, String), Addr<VolumeActor>>,
}

impl Registry {
    pub fn volume(&self, tenant: &str, name: &str) -> Option<Addr<VolumeActor>> {
        self.volumes
            .get(&(tenant.to_owned(), name.to_owned()))
            .map(|a| a.clone())
    }

    /// The actor for a volume, started with `state` if it has none yet.
    pub fn volume_or_start(
        &self,
        tenant: &str,
        name: &str,
        services: &Services,
    ) -> Addr<VolumeActor> {
        self.volumes
            .entry((tenant.to_owned(), name.to_owned()))
            .or_insert_with(|| {
                VolumeActor::new(tenant.to_owned(), VolumeState::default(), services.clone())
                    .start()
            })
            .clone()
    }

    pub fn start_volume(&self, tenant: &str, state: VolumeState, services: &Services) {
        let key = (tenant.to_owned(), state.name.clone());
        let addr = VolumeActor::new(tenant.to_owned(), state, services.clone()).start();
        self.volumes.insert(key, addr);
    }

    /// Every volume actor of a tenant, in name order.
    pub fn volumes_of(&self, tenant: &str) -> Vec<(String, Addr<VolumeActor>)> {
        let mut out: Vec<_> = self
            .volumes
            .iter()
            .filter(|e| e.key().0 == tenant)
            .map(|e| (e.key().1.clone(), e.value().clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn all_volumes(&self) -> Vec<((String, String), Addr<VolumeActor>)> {
        self.volumes
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }
}
