//! `GET /v1/models` and `GET /v1/models/{id}`: the configured models only, in
//! the OpenAI or the Anthropic listing shape (Anthropic SDKs send
//! `anthropic-version`).

use std::time::SystemTime;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::api::ApiFlavor;
use crate::routing::{ModelRoute, RouteTable};
use crate::time::{rfc3339, unix_seconds};

/// Listings rendered once at start; the model set does not change at run time.
pub struct ModelListing {
    openai: Bytes,
    anthropic: Bytes,
    created: SystemTime,
}

impl ModelListing {
    pub fn new(routes: &RouteTable, created: SystemTime) -> ModelListing {
        let openai: Vec<Value> = routes.iter().map(|r| openai_model(r, created)).collect();
        let anthropic: Vec<Value> = routes.iter().map(|r| anthropic_model(r, created)).collect();
        let first = routes.iter().next().map(|r| r.name.to_string());
        let last = routes.iter().last().map(|r| r.name.to_string());
        ModelListing {
            openai: Bytes::from(json!({ "object": "list", "data": openai }).to_string()),
            anthropic: Bytes::from(
                json!({ "data": anthropic, "has_more": false, "first_id": first, "last_id": last })
                    .to_string(),
            ),
            created,
        }
    }

    pub fn list(&self, flavor: ApiFlavor) -> Bytes {
        match flavor {
            ApiFlavor::OpenAi => self.openai.clone(),
            ApiFlavor::Anthropic => self.anthropic.clone(),
        }
    }

    pub fn one(&self, route: &ModelRoute, flavor: ApiFlavor) -> Bytes {
        let value = match flavor {
            ApiFlavor::OpenAi => openai_model(route, self.created),
            ApiFlavor::Anthropic => anthropic_model(route, self.created),
        };
        Bytes::from(value.to_string())
    }
}

fn openai_model(route: &ModelRoute, created: SystemTime) -> Value {
    json!({
        "id": route.name,
        "object": "model",
        "created": unix_seconds(created),
        "owned_by": route.provider.name(),
    })
}

fn anthropic_model(route: &ModelRoute, created: SystemTime) -> Value {
    json!({
        "type": "model",
        "id": route.name,
        "display_name": route.name,
        "created_at": rfc3339(created),
    })
}
