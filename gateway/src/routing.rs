//! Model routing: which upstream serves the model a client asked for.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::intern::intern;
use crate::providers::{self, Provider};

/// One model clients may call, and where it goes.
pub struct ModelRoute {
    /// The name clients send. Names are interned (`crate::intern`): every
    /// call's log record copies them.
    pub name: &'static str,
    pub provider: Arc<dyn Provider>,
    /// The provider's configured name.
    pub provider_name: &'static str,
    /// The name sent upstream instead, when configured.
    pub upstream_model: Option<&'static str>,
}

/// All routes, looked up by the client's model name.
pub struct RouteTable {
    routes: HashMap<&'static str, Arc<ModelRoute>>,
    /// In config order, for listings.
    ordered: Vec<Arc<ModelRoute>>,
    providers: Vec<Arc<dyn Provider>>,
}

impl RouteTable {
    pub fn from_config(config: &Config) -> std::io::Result<RouteTable> {
        let providers = config
            .providers
            .iter()
            .map(providers::from_config)
            .collect::<std::io::Result<Vec<Arc<dyn Provider>>>>()?;
        let ordered: Vec<Arc<ModelRoute>> = config
            .models
            .iter()
            .map(|model| {
                Arc::new(ModelRoute {
                    name: intern(&model.name),
                    provider: providers[model.provider].clone(),
                    provider_name: intern(providers[model.provider].name()),
                    upstream_model: model.upstream_model.as_deref().map(intern),
                })
            })
            .collect();
        let routes = ordered
            .iter()
            .map(|route| (route.name, route.clone()))
            .collect();
        Ok(RouteTable {
            routes,
            ordered,
            providers,
        })
    }

    pub fn get(&self, model: &str) -> Option<&Arc<ModelRoute>> {
        self.routes.get(model)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ModelRoute>> {
        self.ordered.iter()
    }

    pub fn providers(&self) -> &[Arc<dyn Provider>] {
        &self.providers
    }
}
