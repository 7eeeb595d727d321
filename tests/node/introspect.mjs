// Sends graphql-js's standard introspection query with every option on (what GraphiQL's
// docs explorer, graphql-codegen, Apollo Rover, Postman and Insomnia send), builds a client
// schema from the answer and prints Query's fields, one per line. Exits non-zero on any
// error. Usage: node introspect.mjs URL
import { buildClientSchema, getIntrospectionQuery } from 'graphql';

const [url] = process.argv.slice(2);
if (!url) {
  console.error('usage: node introspect.mjs URL');
  process.exit(2);
}
const query = getIntrospectionQuery({
  descriptions: true,
  specifiedByUrl: true,
  directiveIsRepeatable: true,
  schemaDescription: true,
  inputValueDeprecation: true,
  oneOf: true,
});
const response = await fetch(url, {
  method: 'POST',
  headers: { 'content-type': 'application/json', accept: 'application/graphql-response+json' },
  body: JSON.stringify({ query, operationName: 'IntrospectionQuery' }),
});
const body = await response.json();
if (response.status !== 200 || body.errors) {
  console.error(`HTTP ${response.status}: ${JSON.stringify(body.errors ?? body)}`);
  process.exit(1);
}
const schema = buildClientSchema(body.data);
for (const name of Object.keys(schema.getQueryType().getFields())) console.log(name);
