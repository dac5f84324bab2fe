// Evaluates IAM requests with @cloud-copilot/iam-simulate, one Node process for a whole batch.
//
// stdin: a JSON list of requests, each
//   {identityPolicies: [{name, policy}], resourcePolicy?, action, resource, accountId, principal, context,
//    contextAsGiven?}
// stdout: a JSON list of decisions in the same order, each
//   {decision: "Allowed" | "ImplicitlyDenied" | "ExplicitlyDenied" | "Error",
//    reasons, ignoredContextKeys, resourceType, errors?}
// `reasons` are the statements that granted an allowed request or denied a refused one.
//
// runSimulation validates the request and drops the context keys the service authorization
// reference does not list for the action. A key a service sets on every request of its sessions
// (codebuild:buildArn in a build's role session) is not listed there: with `contextAsGiven` the
// identity policies are evaluated by runUnsafeSimulation, with the context as given (and no
// explanation). Its resource-policy path fails in this version (it reads the name of an unnamed
// policy), so a resource policy is evaluated on its own by runSimulation, and the two combine as
// IAM combines them within one account: an explicit deny of either wins, else an allow of either.

import {
  getDenialReasons,
  getGrantReasons,
  runSimulation,
  runUnsafeSimulation
} from '@cloud-copilot/iam-simulate'

async function readStdin() {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return JSON.parse(Buffer.concat(chunks).toString('utf8'))
}

function explainOne(analysis) {
  return analysis.result === 'Allowed' ? getGrantReasons(analysis) : getDenialReasons(analysis)
}

async function evaluate(request) {
  const simulation = {
    request: {
      principal: request.principal,
      action: request.action,
      resource: { resource: request.resource, accountId: request.accountId },
      contextVariables: request.context ?? {}
    },
    identityPolicies: request.identityPolicies,
    serviceControlPolicies: [],
    resourceControlPolicies: [],
    ...(request.resourcePolicy ? { resourcePolicy: request.resourcePolicy } : {})
  }
  if (request.contextAsGiven) {
    return evaluateAsGiven(request, simulation)
  }
  const response = await runSimulation(simulation, { simulationMode: 'Strict' })
  if (response.resultType === 'error') {
    return { decision: 'Error', errors: response.errors }
  }
  // A resource without wildcards gives one result; `results` lists each pattern of a wildcard one.
  const results = response.resultType === 'single' ? [response.result] : response.results
  return {
    decision: response.overallResult,
    reasons: results.map((result) => explainOne(result.analysis)),
    ignoredContextKeys: [...new Set(results.flatMap((result) => result.ignoredContextKeys ?? []))],
    resourceType: results.map((result) => result.resourceType).filter(Boolean)
  }
}

async function evaluateAsGiven(request, simulation) {
  const { resourcePolicy, ...identityOnly } = simulation
  const decisions = [runUnsafeSimulation(identityOnly, { simulationMode: 'Strict' })]
  if (resourcePolicy) {
    const alone = await evaluate({ ...request, identityPolicies: [], contextAsGiven: false })
    if (alone.decision === 'Error') return alone
    decisions.push(alone.decision)
  }
  const decision = decisions.includes('ExplicitlyDenied')
    ? 'ExplicitlyDenied'
    : decisions.includes('Allowed')
      ? 'Allowed'
      : 'ImplicitlyDenied'
  return { decision, reasons: [], ignoredContextKeys: [], resourceType: [] }
}

const requests = await readStdin()
const decisions = []
for (const request of requests) {
  try {
    decisions.push(await evaluate(request))
  } catch (error) {
    decisions.push({ decision: 'Error', errors: { message: String(error?.message ?? error) } })
  }
}
process.stdout.write(JSON.stringify(decisions))
