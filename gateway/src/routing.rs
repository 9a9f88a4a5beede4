//! Model routing: which upstream serves the model a client asked for.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::providers::{self, Provider};

/// One model clients may call, and where it goes.
pub struct ModelRoute {
    /// The name clients send.
    pub name: Arc<str>,
    pub provider: Arc<dyn Provider>,
    /// The provider's configured name, shared for cheap logging.
    pub provider_name: Arc<str>,
    /// The name sent upstream instead, when configured.
    pub upstream_model: Option<Arc<str>>,
}

/// All routes, looked up by the client's model name.
pub struct RouteTable {
    routes: HashMap<Arc<str>, Arc<ModelRoute>>,
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
                    name: model.name.as_str().into(),
                    provider: providers[model.provider].clone(),
                    provider_name: providers[model.provider].name().into(),
                    upstream_model: model.upstream_model.as_deref().map(Arc::from),
                })
            })
            .collect();
        let routes = ordered
            .iter()
            .map(|route| (route.name.clone(), route.clone()))
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
