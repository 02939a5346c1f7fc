//! The registry: where to find the actor of each aggregate. Dashmaps from
//! `(tenant, name)` to the actor's address, one for volumes and one for
//! apps, and one from node name to node actor. Actors are started lazily (on the first command for a name) or at
//! start-up from the journal. An actor that died (a panic) is forgotten and
//! started again from the journal (see [`crate::gateway`]). It also holds
//! the cluster's single owners: placement ([`crate::placement`]),
//! repositories ([`crate::repo_actor`]) and workflows ([`crate::workflow`]).

use std::sync::Arc;

use actix::prelude::*;
use cairn_schema::{AppState, VolumeState};
use dashmap::DashMap;

use crate::app::AppActor;
use crate::node::NodeActor;
use crate::placement::PlacementActor;
use crate::repo_actor::RepoActor;
use crate::services::Services;
use crate::volume::VolumeActor;
use crate::workflow::WorkflowActor;

type Key = (String, String);

pub struct Registry {
    /// The placement actor every app actor plans through.
    placement: Addr<PlacementActor>,
    /// The owner of every repository registration.
    repos: Addr<RepoActor>,
    /// The owner of every workflow aggregate.
    workflows: Addr<WorkflowActor>,
    volumes: DashMap<Key, Addr<VolumeActor>>,
    apps: DashMap<Key, Addr<AppActor>>,
    nodes: DashMap<String, Addr<NodeActor>>,
    sagas: DashMap<Key, crate::saga::SagaHandle>,
}

fn key(tenant: &str, name: &str) -> Key {
    (tenant.to_owned(), name.to_owned())
}

/// Entries of one tenant, in name order.
fn of_tenant<A: Clone>(map: &DashMap<Key, A>, tenant: &str) -> Vec<(String, A)> {
    let mut out: Vec<_> = map
        .iter()
        .filter(|e| e.key().0 == tenant)
        .map(|e| (e.key().1.clone(), e.value().clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

impl crate::volume::Directory for Registry {
    fn volume_or_start(&self, tenant: &str, name: &str, services: &Services) -> Addr<VolumeActor> {
        Registry::volume_or_start(self, tenant, name, services)
    }
}

impl Registry {
    /// An empty registry over the cluster's single-owner actors: app actors
    /// place through `placement`.
    pub fn new(
        placement: Addr<PlacementActor>,
        repos: Addr<RepoActor>,
        workflows: Addr<WorkflowActor>,
    ) -> Registry {
        Registry {
            placement,
            repos,
            workflows,
            volumes: DashMap::new(),
            apps: DashMap::new(),
            nodes: DashMap::new(),
            sagas: DashMap::new(),
        }
    }

    /// The one owner of placement decisions.
    pub fn placement(&self) -> &Addr<PlacementActor> {
        &self.placement
    }

    /// The owner of every repository registration.
    pub fn repos(&self) -> &Addr<RepoActor> {
        &self.repos
    }

    /// The owner of every workflow aggregate.
    pub fn workflows(&self) -> &Addr<WorkflowActor> {
        &self.workflows
    }

    /// A running saga.
    pub fn saga(&self, tenant: &str, id: &str) -> Option<crate::saga::SagaHandle> {
        self.sagas.get(&key(tenant, id)).map(|h| h.clone())
    }

    /// Registers a saga unless one with its id runs: false if one does.
    pub fn add_saga(&self, tenant: &str, id: &str, handle: crate::saga::SagaHandle) -> bool {
        match self.sagas.entry(key(tenant, id)) {
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(v) => {
                v.insert(handle);
                true
            }
        }
    }

    pub fn remove_saga(&self, tenant: &str, id: &str) {
        self.sagas.remove(&key(tenant, id));
    }

    /// Forgets every actor: with their last addresses gone they stop (when
    /// the arbiter next polls them) and drop their services.
    pub fn clear(&self) {
        self.volumes.clear();
        self.apps.clear();
        self.nodes.clear();
        self.sagas.clear();
    }

    pub fn running_sagas(&self) -> usize {
        self.sagas.len()
    }

    /// Sagas of one tenant running now (a scan: at most the global cap).
    pub fn running_sagas_of(&self, tenant: &str) -> usize {
        self.sagas.iter().filter(|e| e.key().0 == tenant).count()
    }

    pub fn volume(&self, tenant: &str, name: &str) -> Option<Addr<VolumeActor>> {
        self.volumes.get(&key(tenant, name)).map(|a| a.clone())
    }

    /// The actor for a volume, started with an empty state if it has none yet.
    pub fn volume_or_start(
        &self,
        tenant: &str,
        name: &str,
        services: &Services,
    ) -> Addr<VolumeActor> {
        self.volumes
            .entry(key(tenant, name))
            .or_insert_with(|| {
                VolumeActor::new(tenant.to_owned(), VolumeState::default(), services.clone())
                    .start()
            })
            .clone()
    }

    /// Starts (or replaces) the actor of a volume with `state`.
    pub fn start_volume(
        &self,
        tenant: &str,
        name: &str,
        state: VolumeState,
        services: &Services,
    ) -> Addr<VolumeActor> {
        let k = key(tenant, name);
        let addr = VolumeActor::new(tenant.to_owned(), state, services.clone()).start();
        self.volumes.insert(k, addr.clone());
        addr
    }

    pub fn volumes_of(&self, tenant: &str) -> Vec<(String, Addr<VolumeActor>)> {
        of_tenant(&self.volumes, tenant)
    }

    pub fn all_volumes(&self) -> Vec<(Key, Addr<VolumeActor>)> {
        self.volumes
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    /// Starts (or replaces) the actor of a node.
    pub fn start_node(
        &self,
        name: &str,
        state: cairn_schema::state::NodeState,
        services: &Services,
    ) -> Addr<NodeActor> {
        let addr = NodeActor::new(state, services.clone()).start();
        self.nodes.insert(name.to_owned(), addr.clone());
        addr
    }

    pub fn node(&self, name: &str) -> Option<Addr<NodeActor>> {
        self.nodes.get(name).map(|a| a.clone())
    }

    /// Every node actor, in name order.
    pub fn nodes(&self) -> Vec<(String, Addr<NodeActor>)> {
        let mut out: Vec<_> = self
            .nodes
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn app(&self, tenant: &str, name: &str) -> Option<Addr<AppActor>> {
        self.apps.get(&key(tenant, name)).map(|a| a.clone())
    }

    /// The actor for an app, started with an empty state if it has none yet.
    pub fn app_or_start(
        self: &Arc<Self>,
        tenant: &str,
        name: &str,
        services: &Services,
    ) -> Addr<AppActor> {
        self.apps
            .entry(key(tenant, name))
            .or_insert_with(|| {
                AppActor::new(
                    tenant.to_owned(),
                    AppState::default(),
                    services.clone(),
                    self.directory(),
                    self.placement.clone(),
                )
                .start()
            })
            .clone()
    }

    /// Starts (or replaces) the actor of an app with `state`.
    pub fn start_app(
        self: &Arc<Self>,
        tenant: &str,
        name: &str,
        state: AppState,
        services: &Services,
    ) -> Addr<AppActor> {
        let k = key(tenant, name);
        let addr = AppActor::new(
            tenant.to_owned(),
            state,
            services.clone(),
            self.directory(),
            self.placement.clone(),
        )
        .start();
        self.apps.insert(k, addr.clone());
        addr
    }

    /// This registry as the app actors see it: where volume actors are.
    fn directory(self: &Arc<Self>) -> std::sync::Weak<dyn crate::volume::Directory> {
        Arc::downgrade(self) as std::sync::Weak<dyn crate::volume::Directory>
    }

    pub fn apps_of(&self, tenant: &str) -> Vec<(String, Addr<AppActor>)> {
        of_tenant(&self.apps, tenant)
    }

    pub fn all_apps(&self) -> Vec<(Key, Addr<AppActor>)> {
        self.apps
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }
}
