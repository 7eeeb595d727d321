// Runs graphql-http's audit of the GraphQL-over-HTTP spec against an endpoint and prints
// one line per result ("ok", "warn" or "error", with the audit's id and name); exits
// non-zero when anything is not ok. Usage: node audit.mjs URL
import { auditServer } from 'graphql-http';

const [url] = process.argv.slice(2);
if (!url) {
  console.error('usage: node audit.mjs URL');
  process.exit(2);
}
const results = await auditServer({ url });
let notOk = 0;
for (const result of results) {
  if (result.status !== 'ok') notOk += 1;
  const reason = result.status === 'ok' ? '' : `: ${result.reason}`;
  console.log(`${result.status} ${result.id} ${result.name}${reason}`);
}
const count = (status) => results.filter((r) => r.status === status).length;
console.log(`audit: ${count('ok')} ok, ${count('warn')} warnings, ${count('error')} errors`);
process.exit(notOk ? 1 : 0);
