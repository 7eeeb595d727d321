//! What a request's document says about itself, read before it runs: which kind of operation
//! it is (for the GET rule and the rate limits), how many root fields it asks (a mutation
//! costs one unit of rate limit per root field), how many aliases it uses (alias
//! overloading), whether it introspects, how deeply it nests. The guards (`graphql::guards`)
//! act on these; complexity and directives are limited by the schema itself
//! (`graphql::build_schema`).
//!
//! Depth is counted here rather than by the schema's limit because introspection is
//! counted apart: graphql-js's standard introspection query (what GraphiQL's docs,
//! graphql-codegen, Rover, Postman and Insomnia send) nests its type references 15 levels
//! deep, more than any user query needs, and must not be refused for it.

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationType, Selection, SelectionSet,
};
use async_graphql::Positioned;

/// What a request's document says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentFacts {
    /// The operation that would run; None when the name matches none (the executor says so).
    pub operation: Option<OperationType>,
    /// The root fields of that operation (fragments spread at the root counted through).
    pub root_fields: usize,
    pub aliases: usize,
    /// Whether it asks for `__schema` or `__type` (refused in production).
    pub introspects: bool,
    /// The deepest nesting of fields outside introspection, fragments inlined (as
    /// async-graphql counts it).
    pub depth: usize,
    /// The deepest nesting inside a `__schema` or `__type` field, counted from it.
    pub introspection_depth: usize,
}

/// Reads the facts, or None when the document does not parse (the executor reports that).
pub fn inspect(query: &str, operation_name: Option<&str>) -> Option<DocumentFacts> {
    let document = async_graphql::parser::parse_query(query).ok()?;
    Some(inspect_document(&document, operation_name))
}

/// The facts of a parsed document. The HTTP layer parses through the request
/// (`Request::parsed_query`), which keeps the document for the executor: parsed once.
pub fn inspect_document(
    document: &ExecutableDocument,
    operation_name: Option<&str>,
) -> DocumentFacts {
    let depths = measure_depths(document);
    DocumentFacts {
        operation: operation_type(document, operation_name),
        root_fields: root_fields(document, operation_name),
        aliases: count_aliases(document),
        introspects: introspects(document),
        depth: depths.user,
        introspection_depth: depths.introspection,
    }
}

#[derive(Default)]
struct Depths {
    user: usize,
    introspection: usize,
}

/// How deep a document nests, every operation and fragment spread included.
fn measure_depths(document: &ExecutableDocument) -> Depths {
    let mut depths = Depths::default();
    let mut spreading = Vec::new();
    for (_, operation) in document.operations.iter() {
        walk(
            document,
            &operation.node.selection_set,
            0,
            false,
            &mut spreading,
            &mut depths,
        );
    }
    depths
}

/// Nesting deeper than this is not measured further (validation refuses it anyway).
const DEEPEST_MEASURED: usize = 256;

/// Visits `set` whose fields sit at `depth + 1`; a `__schema` or `__type` field starts an
/// introspection count of its own. `spreading` holds the fragments being inlined, so a
/// fragment cycle (which validation refuses) ends here.
fn walk<'d>(
    document: &'d ExecutableDocument,
    set: &'d Positioned<SelectionSet>,
    depth: usize,
    introspecting: bool,
    spreading: &mut Vec<&'d str>,
    depths: &mut Depths,
) {
    if depth >= DEEPEST_MEASURED {
        return;
    }
    for item in &set.node.items {
        match &item.node {
            Selection::Field(field) => {
                let name = field.node.name.node.as_str();
                let (depth, introspecting) = match name {
                    "__schema" | "__type" if !introspecting => (1, true),
                    _ => (depth + 1, introspecting),
                };
                let deepest = match introspecting {
                    true => &mut depths.introspection,
                    false => &mut depths.user,
                };
                *deepest = (*deepest).max(depth);
                walk(
                    document,
                    &field.node.selection_set,
                    depth,
                    introspecting,
                    spreading,
                    depths,
                );
            }
            Selection::InlineFragment(fragment) => walk(
                document,
                &fragment.node.selection_set,
                depth,
                introspecting,
                spreading,
                depths,
            ),
            Selection::FragmentSpread(spread) => {
                let name = spread.node.fragment_name.node.as_str();
                let Some(fragment) = document.fragments.get(&spread.node.fragment_name.node) else {
                    continue;
                };
                if spreading.contains(&name) {
                    continue;
                }
                spreading.push(name);
                walk(
                    document,
                    &fragment.node.selection_set,
                    depth,
                    introspecting,
                    spreading,
                    depths,
                );
                spreading.pop();
            }
        }
    }
}

fn root_fields(document: &ExecutableDocument, name: Option<&str>) -> usize {
    let operation = match (&document.operations, name) {
        (DocumentOperations::Single(op), _) => op,
        (DocumentOperations::Multiple(ops), Some(name)) => match ops.get(name) {
            Some(op) => op,
            None => return 0,
        },
        (DocumentOperations::Multiple(_), None) => return 0,
    };
    fields_in(document, &operation.node.selection_set, 0)
}

/// Fields of a selection set, through fragments (bounded: a fragment cycle is refused by
/// validation, and this stops counting past a few levels of fragments anyway).
fn fields_in(document: &ExecutableDocument, set: &Positioned<SelectionSet>, depth: usize) -> usize {
    if depth > 8 {
        return 0;
    }
    set.node
        .items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(_) => 1,
            Selection::InlineFragment(fragment) => {
                fields_in(document, &fragment.node.selection_set, depth + 1)
            }
            Selection::FragmentSpread(spread) => document
                .fragments
                .get(&spread.node.fragment_name.node)
                .map_or(0, |fragment| {
                    fields_in(document, &fragment.node.selection_set, depth + 1)
                }),
        })
        .sum()
}

fn operation_type(document: &ExecutableDocument, name: Option<&str>) -> Option<OperationType> {
    match (&document.operations, name) {
        (DocumentOperations::Single(op), _) => Some(op.node.ty),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name).map(|op| op.node.ty),
        // Several operations and no name: the executor refuses it.
        (DocumentOperations::Multiple(_), None) => None,
    }
}

fn count_aliases(document: &ExecutableDocument) -> usize {
    let operations: usize = document
        .operations
        .iter()
        .map(|(_, op)| aliases_in(&op.node.selection_set))
        .sum();
    let fragments: usize = document
        .fragments
        .values()
        .map(|f| aliases_in(&f.node.selection_set))
        .sum();
    operations + fragments
}

fn introspects(document: &ExecutableDocument) -> bool {
    let in_set = |set: &Positioned<SelectionSet>| fields_named(set, &["__schema", "__type"]);
    document
        .operations
        .iter()
        .any(|(_, op)| in_set(&op.node.selection_set))
        || document
            .fragments
            .values()
            .any(|f| in_set(&f.node.selection_set))
}

fn fields_named(set: &Positioned<SelectionSet>, names: &[&str]) -> bool {
    set.node.items.iter().any(|item| match &item.node {
        Selection::Field(field) => {
            names.contains(&field.node.name.node.as_str())
                || fields_named(&field.node.selection_set, names)
        }
        Selection::InlineFragment(fragment) => fields_named(&fragment.node.selection_set, names),
        Selection::FragmentSpread(_) => false,
    })
}

fn aliases_in(set: &Positioned<SelectionSet>) -> usize {
    set.node
        .items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(field) => {
                usize::from(field.node.alias.is_some()) + aliases_in(&field.node.selection_set)
            }
            Selection::InlineFragment(fragment) => aliases_in(&fragment.node.selection_set),
            Selection::FragmentSpread(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_counted_in_operations_and_fragments() {
        let facts = inspect(
            "query { a: products { edges { b: cursor } } ...F } fragment F on Query { c: products { edges { cursor } } }",
            None,
        )
        .unwrap();
        assert_eq!(facts.aliases, 3);
        assert!(!facts.introspects);
        assert!(
            inspect("{ a: __type(name: \"Query\") { name } }", None)
                .unwrap()
                .introspects
        );
        assert_eq!(facts.operation, Some(OperationType::Query));
    }

    #[test]
    fn depth_counts_fields_through_fragments_and_introspection_apart() {
        let facts = inspect(
            "query { products { edges { node { ...N } } } }
             fragment N on Product { reviews { edges { node { id } } } }",
            None,
        )
        .unwrap();
        assert_eq!(facts.depth, 7);
        assert_eq!(facts.introspection_depth, 0);
        let facts = inspect(
            "{ __typename products { edges { cursor } } __schema { types { fields { type { ofType { name } } } } } }",
            None,
        )
        .unwrap();
        assert_eq!((facts.depth, facts.introspection_depth), (3, 6));
        // A fragment cycle (refused by validation) does not loop here.
        let cycle = inspect(
            "{ ...A } fragment A on Query { ...B } fragment B on Query { products { edges { cursor } } ...A }",
            None,
        )
        .unwrap();
        assert_eq!(cycle.depth, 3);
    }

    #[test]
    fn the_named_operation_decides_the_kind() {
        let doc =
            "query Q { products { edges { cursor } } } mutation M { deleteReview(id: \"x\") }";
        assert_eq!(
            inspect(doc, Some("M")).unwrap().operation,
            Some(OperationType::Mutation)
        );
        assert_eq!(
            inspect(doc, Some("Q")).unwrap().operation,
            Some(OperationType::Query)
        );
        assert_eq!(inspect(doc, None).unwrap().operation, None);
        assert!(inspect("{ broken", None).is_none());
    }

    #[test]
    fn root_fields_are_counted_through_fragments() {
        let doc = "mutation M { a: deleteReview(id: \"1\") b: deleteReview(id: \"2\") ...F
                   ... on Mutation { c: deleteReview(id: \"3\") } }
                   fragment F on Mutation { d: deleteReview(id: \"4\") e: deleteReview(id: \"5\") }";
        assert_eq!(inspect(doc, Some("M")).unwrap().root_fields, 5);
        assert_eq!(
            inspect("{ products { edges { cursor } } }", None)
                .unwrap()
                .root_fields,
            1
        );
    }
}
