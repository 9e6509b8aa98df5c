//! Proves the local control plane behaves like a real cluster in the ways the
//! operator relies on: CRDs with a status subresource, server-side apply and
//! field ownership, optimistic concurrency, watches and garbage collection.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, CustomResource, CustomResourceExt, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::support::{eventually, with_namespace};

/// A throwaway custom resource used only by these tests.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "smoke.test.tokenoperator.io",
    version = "v1",
    kind = "SmokeWidget",
    namespaced,
    status = "SmokeWidgetStatus"
)]
pub struct SmokeWidgetSpec {
    size: i32,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmokeWidgetStatus {
    observed_size: Option<i32>,
}

/// Applies the SmokeWidget CRD (idempotent) and waits until it is served.
async fn ensure_smoke_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = SmokeWidget::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply("oauth-token-operator-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply SmokeWidget CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await
    .expect("CRD established within 30 s")
    .expect("watch CRD");
}

fn widget(name: &str, size: i32) -> SmokeWidget {
    SmokeWidget::new(name, SmokeWidgetSpec { size })
}

fn config_map(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".to_string(), value.to_string())])),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_crd_with_a_status_subresource_is_established_and_serves_status() {
    let client = crate::support::client().await;
    ensure_smoke_crd(&client).await;
    let crd = Api::<CustomResourceDefinition>::all(client)
        .get(SmokeWidget::crd_name())
        .await
        .expect("read back CRD");
    let version = &crd.spec.versions[0];
    assert!(version.served && version.storage);
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some(),
        "the CRD must declare the status subresource"
    );
}

#[tokio::test]
async fn server_side_apply_keeps_spec_and_status_owned_by_their_own_field_managers() {
    with_namespace("smoke-ssa", |client, ns| async move {
        ensure_smoke_crd(&client).await;
        let widgets: Api<SmokeWidget> = Api::namespaced(client, &ns);

        let applied = widgets
            .patch(
                "w",
                &PatchParams::apply("smoke-spec-writer"),
                &Patch::Apply(widget("w", 3)),
            )
            .await
            .expect("server-side apply of the object");
        assert_eq!(applied.spec.size, 3);
        assert!(applied.status.is_none());

        let status = json!({
            "apiVersion": SmokeWidget::api_version(&()),
            "kind": SmokeWidget::kind(&()),
            "status": { "observedSize": 3 }
        });
        let with_status = widgets
            .patch_status(
                "w",
                &PatchParams::apply("smoke-status-writer"),
                &Patch::Apply(&status),
            )
            .await
            .expect("server-side apply of the status");
        assert_eq!(with_status.status.unwrap().observed_size, Some(3));
        assert_eq!(
            with_status.spec.size, 3,
            "a status apply leaves the spec alone"
        );

        let managers: Vec<(String, Option<String>)> = with_status
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .map(|m| (m.manager.unwrap_or_default(), m.subresource))
            .collect();
        assert!(
            managers.contains(&("smoke-spec-writer".into(), None)),
            "{managers:?}"
        );
        assert!(
            managers.contains(&("smoke-status-writer".into(), Some("status".into()))),
            "{managers:?}"
        );

        // Status written through the main resource is ignored: the status
        // subresource is the only way in.
        let mut sneaky = widget("w", 4);
        sneaky.status = Some(SmokeWidgetStatus {
            observed_size: Some(99),
        });
        let after = widgets
            .patch(
                "w",
                &PatchParams::apply("smoke-spec-writer"),
                &Patch::Apply(sneaky),
            )
            .await
            .expect("apply spec change");
        assert_eq!(after.spec.size, 4);
        assert_eq!(after.status.unwrap().observed_size, Some(3));

        // Another manager taking a field it does not own conflicts unless forced.
        let conflict = widgets
            .patch(
                "w",
                &PatchParams::apply("someone-else"),
                &Patch::Apply(widget("w", 5)),
            )
            .await
            .expect_err("a field owned by another manager conflicts");
        assert_eq!(api_error_code(&conflict), Some(409), "{conflict}");
    })
    .await;
}

#[tokio::test]
async fn a_replace_with_a_stale_resource_version_gets_409() {
    with_namespace("smoke-conflict", |client, ns| async move {
        let maps: Api<ConfigMap> = Api::namespaced(client, &ns);
        let original = maps
            .create(&PostParams::default(), &config_map("c", "v1"))
            .await
            .expect("create");
        maps.patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "v2"}})),
        )
        .await
        .expect("concurrent update");

        let mut stale = original.clone();
        stale.data = Some(BTreeMap::from([("k".to_string(), "v3".to_string())]));
        let err = maps
            .replace("c", &PostParams::default(), &stale)
            .await
            .expect_err("stale write");
        assert_eq!(api_error_code(&err), Some(409), "{err}");
        let current = maps.get("c").await.expect("get");
        assert_eq!(
            current.data.unwrap()["k"],
            "v2",
            "the stale write changed nothing"
        );
    })
    .await;
}

#[tokio::test]
async fn a_watch_sees_an_update() {
    with_namespace("smoke-watch", |client, ns| async move {
        let maps: Api<ConfigMap> = Api::namespaced(client, &ns);
        maps.create(&PostParams::default(), &config_map("watched", "before"))
            .await
            .expect("create");

        let mut stream = watcher(
            maps.clone(),
            watcher::Config::default().fields("metadata.name=watched"),
        )
        .applied_objects()
        .boxed();
        let first = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .expect("initial list within 10 s")
            .expect("watch")
            .expect("an object");
        assert_eq!(first.data.unwrap()["k"], "before");

        maps.patch(
            "watched",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "after"}})),
        )
        .await
        .expect("update");
        let seen = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(cm) = stream.try_next().await.expect("watch") {
                if cm.data.as_ref().map(|d| d["k"].as_str()) == Some("after") {
                    return cm;
                }
            }
            panic!("watch ended without the update");
        })
        .await
        .expect("the update arrives within 10 s");
        assert_eq!(seen.name_any(), "watched");
    })
    .await;
}

#[tokio::test]
async fn a_secret_whose_custom_resource_owner_is_deleted_is_garbage_collected() {
    with_namespace("smoke-gc", |client, ns| async move {
        ensure_smoke_crd(&client).await;
        let widgets: Api<SmokeWidget> = Api::namespaced(client.clone(), &ns);
        let secrets: Api<Secret> = Api::namespaced(client, &ns);

        let owner = widgets
            .create(&PostParams::default(), &widget("owner", 1))
            .await
            .expect("owner");
        let owned = Secret {
            metadata: ObjectMeta {
                name: Some("owned".into()),
                owner_references: Some(vec![OwnerReference {
                    controller: Some(true),
                    ..owner.controller_owner_ref(&()).expect("owner reference")
                }]),
                ..Default::default()
            },
            string_data: Some(BTreeMap::from([("k".into(), "v".into())])),
            ..Default::default()
        };
        secrets
            .create(&PostParams::default(), &owned)
            .await
            .expect("owned secret");
        let unowned = Secret {
            metadata: ObjectMeta {
                name: Some("unowned".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        secrets
            .create(&PostParams::default(), &unowned)
            .await
            .expect("unowned secret");

        widgets
            .delete("owner", &DeleteParams::background())
            .await
            .expect("delete owner");
        // kube-controller-manager discovers a new CRD kind on its 30 s rescan,
        // so collection of a custom-resource-owned object can take that long.
        eventually(
            "the owned Secret to be garbage-collected",
            Duration::from_secs(90),
            || {
                let secrets = secrets.clone();
                async move {
                    secrets
                        .get_opt("owned")
                        .await
                        .expect("get")
                        .is_none()
                        .then_some(())
                }
            },
        )
        .await;
        assert!(
            secrets.get_opt("unowned").await.expect("get").is_some(),
            "only owned objects go"
        );
    })
    .await;
}

fn api_error_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}
