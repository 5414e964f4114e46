metadata name = 'alerts'
metadata description = 'Log alerts on the Log Analytics workspace behind Application Insights: dead letters, and a tenant whose circuit breaker stays open.'

@description('Azure region.')
param location string

@description('Name prefix of the alert rules.')
param namePrefix string

@description('Resource id of the Log Analytics workspace.')
param workspaceId string

@description('E-mail address alerts go to; empty = rules without a notification (see them in the portal).')
param alertEmail string = ''

@description('Name of the metric the operations issue emits when a tenant breaker opens (AppMetrics.Name).')
param breakerOpenMetricName string = 'proactive.limiter.breaker_open'

@description('Tags for every resource.')
param tags object = {}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: '${namePrefix}-ops'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'proactive'
    enabled: true
    emailReceivers: [
      {
        name: 'operations'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

var actions = empty(alertEmail) ? [] : [actionGroup.id]

// proactive/delivery/redelivery.py and dead_letters.py log "Dead-lettered ..." (warning) for every row or message it dead-letters.
resource deadLetters 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: '${namePrefix}-dead-letters'
  location: location
  tags: tags
  properties: {
    displayName: 'Proactive messaging: deliveries dead-lettered'
    description: 'A delivery or install exhausted its retries and was dead-lettered (deadletters table). Look up the reason there; re-drive once fixed.'
    severity: 2
    enabled: true
    scopes: [
      workspaceId
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: 'AppTraces | where Message startswith "Dead-lettered"'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actions
    }
  }
}

// A breaker that opens and closes again is the limiter working; one that stays open for 30 minutes means the tenant
// keeps answering 429/5xx (or blocked the app) and a person should look.
resource breakerOpen 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: '${namePrefix}-breaker-open'
  location: location
  tags: tags
  properties: {
    displayName: 'Proactive messaging: a tenant breaker stays open'
    description: 'The per-tenant limiter kept its circuit breaker open for 30 minutes: Teams keeps throttling or failing for that tenant.'
    severity: 2
    enabled: true
    scopes: [
      workspaceId
    ]
    evaluationFrequency: 'PT10M'
    windowSize: 'PT30M'
    criteria: {
      allOf: [
        {
          query: 'AppMetrics | where Name == "${breakerOpenMetricName}" | extend tenant = tostring(Properties.tenant) | summarize isOpen = max(Max) by tenant, bin(TimeGenerated, 10m) | summarize openBins = countif(isOpen > 0) by tenant | where openBins >= 3'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actions
    }
  }
}
