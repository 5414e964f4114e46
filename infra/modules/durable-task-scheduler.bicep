metadata name = 'durable-task-scheduler'
metadata description = 'Optional Durable backend: a Durable Task Scheduler with one task hub, and the Function App identity as Durable Task Data Contributor on it.'

@description('Azure region.')
param location string

@description('Scheduler name.')
param name string

@description('Task hub name.')
param taskHubName string

@description('Scheduler SKU: Consumption (pay per action) or Dedicated (capacity units).')
@allowed([
  'Consumption'
  'Dedicated'
])
param skuName string = 'Consumption'

@description('Object id of the Function App identity.')
param principalId string

@description('Tags for every resource.')
param tags object = {}

// Durable Task Data Contributor: run orchestrations, activities and entities on the scheduler's task hubs.
var dataContributorRoleId = '0ad04412-c4d5-4796-b79c-f76d14c8d402'

resource scheduler 'Microsoft.DurableTask/schedulers@2025-11-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    // The Functions platform calls from shared outbound addresses; access is Entra-only (the role below).
    ipAllowlist: [
      '0.0.0.0/0'
    ]
    // Dedicated is bought in capacity units; Consumption has none.
    sku: union({ name: skuName }, skuName == 'Dedicated' ? { capacity: 1 } : {})
  }
}

resource taskHub 'Microsoft.DurableTask/schedulers/taskHubs@2025-11-01' = {
  parent: scheduler
  name: taskHubName
  properties: {}
}

resource dataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(scheduler.id, principalId, dataContributorRoleId)
  scope: scheduler
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dataContributorRoleId)
  }
}

@description('Scheduler endpoint (DURABLE_TASK_SCHEDULER_CONNECTION_STRING uses it with Authentication=ManagedIdentity).')
output endpoint string = scheduler.properties.endpoint

@description('Task hub name.')
output taskHubName string = taskHub.name
