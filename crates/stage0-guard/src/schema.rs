//! The tools' input and output schemas, in the JSON Schema every client reads cleanly.
//!
//! schemars (through rmcp's `schema_for_input` / `schema_for_output`) writes two things some
//! clients refuse or warn about:
//! - `format` values JSON Schema does not define, such as `uint64` for a `u64` (Ajv, in the MCP
//!   Inspector and the TypeScript SDK, warns `unknown format "uint64" ignored in schema` on every
//!   `tools/list`);
//! - an `Option<T>` field as nullable: `"type": ["string", "null"]`, `null` in an `enum`, or an
//!   `anyOf` with `{"type": "null"}`; several model providers reject `null` in an enum, and the
//!   original declares such arguments optional, not nullable.
//!
//! [`input`] and [`output`] generate the schemas as rmcp does (JSON Schema 2020-12; the output
//! for what `Serialize` writes; no top-level `title` and `description`) and then keep only the
//! `format` values JSON Schema 2020-12 defines (schemars' `RestrictFormats`; `minimum: 0` of an
//! unsigned stays) and make every property that is not `required` plain optional
//! ([`OptionalNotNullable`]). A `required` property keeps its `null`: it can be `null`, and the
//! schema must say so (no tool has one today; `tests/server_binary.rs` checks there is none).

use std::sync::Arc;

use rmcp::model::JsonObject;
use schemars::generate::SchemaSettings;
use schemars::transform::{RestrictFormats, Transform, transform_subschemas};
use schemars::{JsonSchema, Schema};
use serde_json::Value;

/// The input schema of a tool whose arguments are `T`; an error when it is not an object, as MCP
/// requires (a tool's argument type is a struct).
pub fn input<T: JsonSchema>() -> Result<Arc<JsonObject>, String> {
    let schema = generate::<T>(SchemaSettings::draft2020_12());
    match schema.get("type") {
        Some(Value::String(kind)) if kind == "object" => Ok(schema),
        other => Err(format!(
            "MCP requires a tool's inputSchema to be an object, not {}",
            other.map_or_else(|| "a schema without a type".to_owned(), Value::to_string)
        )),
    }
}

/// The output schema of a tool whose `structuredContent` is a `T`, for what `Serialize` writes.
pub fn output<T: JsonSchema>() -> Arc<JsonObject> {
    generate::<T>(SchemaSettings::draft2020_12().for_serialize())
}

fn generate<T: JsonSchema>(settings: SchemaSettings) -> Arc<JsonObject> {
    let mut schema = settings.into_generator().into_root_schema_for::<T>();
    // Applied to the root, which names its meta-schema (2020-12), and from there to every
    // subschema, `$defs` included.
    RestrictFormats::default().transform(&mut schema);
    OptionalNotNullable.transform(&mut schema);
    let Value::Object(mut object) = schema.to_value() else {
        unreachable!("a generated root schema is an object")
    };
    // As rmcp does: the wrapper type's name and doc comment are noise to a model.
    object.remove("title");
    object.remove("description");
    Arc::new(object)
}

/// Makes every property that is not `required` optional but not nullable: drops `"null"` from its
/// `type`, `null` from its `enum`, and `{"type": "null"}` branches from its `anyOf` / `oneOf`
/// (a single branch left takes the place of the `anyOf`), in every subschema.
#[derive(Debug, Clone, Copy, Default)]
pub struct OptionalNotNullable;

impl Transform for OptionalNotNullable {
    fn transform(&mut self, schema: &mut Schema) {
        if let Some(object) = schema.as_object_mut() {
            let required: Vec<String> = object
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            if let Some(Value::Object(properties)) = object.get_mut("properties") {
                for (name, property) in properties.iter_mut() {
                    if let Value::Object(property) = property
                        && !required.contains(name)
                    {
                        not_nullable(property);
                    }
                }
            }
        }
        transform_subschemas(self, schema);
    }
}

/// `property` without any way of being `null` (see [`OptionalNotNullable`]).
fn not_nullable(property: &mut JsonObject) {
    if let Some(Value::Array(types)) = property.get_mut("type") {
        types.retain(|kind| kind != "null");
        if let [single] = types.as_slice() {
            let single = single.clone();
            property.insert("type".to_owned(), single);
        }
    }
    if let Some(Value::Array(values)) = property.get_mut("enum") {
        values.retain(|value| !value.is_null());
    }
    for key in ["anyOf", "oneOf"] {
        let Some(Value::Array(branches)) = property.get_mut(key) else {
            continue;
        };
        branches.retain(|branch| !is_null_schema(branch));
        if branches.len() == 1 {
            let Some(Value::Array(mut branches)) = property.remove(key) else {
                unreachable!("just matched")
            };
            match branches.remove(0) {
                Value::Object(branch) => {
                    for (name, value) in branch {
                        // The property's own keywords (its description) win over the branch's.
                        property.entry(name).or_insert(value);
                    }
                }
                // A boolean schema stays where it was.
                other => {
                    property.insert(key.to_owned(), Value::Array(vec![other]));
                }
            }
        }
    }
}

/// Whether `schema` accepts only `null`: `{"type": "null"}` or `{"const": null}`, with or
/// without annotations.
fn is_null_schema(schema: &Value) -> bool {
    schema.get("type") == Some(&Value::from("null"))
        || (schema.get("const").is_some_and(Value::is_null)
            && schema.get("type").is_none_or(|kind| kind == "null"))
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    use super::*;

    #[derive(Deserialize, Serialize, JsonSchema)]
    #[serde(rename_all = "lowercase")]
    #[schemars(inline)]
    #[allow(dead_code)]
    enum Role {
        Admin,
        Viewer,
    }

    #[derive(Deserialize, Serialize, JsonSchema)]
    #[allow(dead_code)]
    enum Referenced {
        One,
        Two,
    }

    #[derive(Deserialize, Serialize, JsonSchema)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
        note: Option<String>,
    }

    /// Arguments with every shape of optional field, and numbers schemars gives a `format`.
    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Arguments {
        name: String,
        role: Option<Role>,
        referenced: Option<Referenced>,
        inner: Option<Inner>,
        tags: Option<Vec<String>>,
        count: Option<u64>,
        ratio: f64,
        when: Option<i64>,
    }

    /// Output with an optional field that is skipped and one that is written as `null`.
    #[derive(Serialize, JsonSchema)]
    #[allow(dead_code)]
    struct Output {
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<String>,
        written: Option<String>,
        total: u64,
    }

    #[test]
    fn optional_arguments_are_optional_not_nullable_and_enums_keep_their_values() {
        let schema = Value::Object(input::<Arguments>().expect("an object").as_ref().clone());
        let properties = &schema["properties"];
        assert_eq!(
            properties["role"],
            json!({"type": "string", "enum": ["admin", "viewer"]})
        );
        assert_eq!(
            properties["referenced"],
            json!({"$ref": "#/$defs/Referenced"})
        );
        assert_eq!(properties["inner"], json!({"$ref": "#/$defs/Inner"}));
        assert_eq!(
            properties["tags"],
            json!({"type": "array", "items": {"type": "string"}})
        );
        assert_eq!(
            properties["count"],
            json!({"type": "integer", "minimum": 0})
        );
        assert_eq!(properties["ratio"], json!({"type": "number"}));
        assert_eq!(properties["when"], json!({"type": "integer"}));
        // Inside a definition too.
        assert_eq!(
            schema["$defs"]["Inner"]["properties"]["note"],
            json!({"type": "string"})
        );
        assert_eq!(
            schema["$defs"]["Inner"]["properties"]["count"],
            json!({"type": "integer", "minimum": 0})
        );
        assert_eq!(schema["required"], json!(["name", "ratio"]));
        assert!(schema.get("title").is_none() && schema.get("description").is_none());
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
    }

    #[test]
    fn a_field_written_as_null_stays_nullable_in_the_output_schema() {
        let schema = Value::Object(output::<Output>().as_ref().clone());
        let properties = &schema["properties"];
        assert_eq!(properties["skipped"], json!({"type": "string"}));
        assert_eq!(properties["written"], json!({"type": ["string", "null"]}));
        assert_eq!(
            properties["total"],
            json!({"type": "integer", "minimum": 0})
        );
        assert_eq!(schema["required"], json!(["written", "total"]));
    }

    #[test]
    fn standard_formats_are_kept() {
        #[derive(Deserialize, JsonSchema)]
        #[allow(dead_code)]
        struct WithFormats {
            #[schemars(extend("format" = "date-time"))]
            at: String,
            #[schemars(extend("format" = "uuid"))]
            id: String,
            #[schemars(extend("format" = "uint8"))]
            small: String,
        }
        let schema = input::<WithFormats>().expect("an object");
        assert_eq!(schema["properties"]["at"]["format"], "date-time");
        assert_eq!(schema["properties"]["id"]["format"], "uuid");
        assert!(schema["properties"]["small"].get("format").is_none());
    }

    #[test]
    fn null_branches_are_recognised() {
        assert!(is_null_schema(&json!({"type": "null"})));
        assert!(is_null_schema(&json!({"const": null})));
        assert!(is_null_schema(
            &json!({"type": "null", "description": "none"})
        ));
        assert!(!is_null_schema(&json!({"type": "string"})));
        assert!(!is_null_schema(&json!({"const": "null"})));
        assert!(!is_null_schema(&json!(true)));
    }
}
