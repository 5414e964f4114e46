metadata name = 'Proactive Teams messaging'
metadata description = 'Function App on Flex Consumption (Python 3.11, system-assigned identity, identity-based storage), storage, Application Insights on Log Analytics, Key Vault for the bot secret, Azure Bot with the Teams channel, least-privilege data roles, alerts, and an optional Durable Task Scheduler backend.'

targetScope = 'resourceGroup'

// ---------------------------------------------------------------- parameters

@description('Short name used in every resource name (lowercase letters and digits).')
@minLength(2)
@maxLength(12)
param appName string = 'proactive'

@description('Azure region of every regional resource.')
param location string = resourceGroup().location

@description('Client id of the bot Entra app registration (single tenant): MicrosoftAppId.')
param botAppId string

@description('Tenant of the bot app registration: MicrosoftAppTenantId.')
param botAppTenantId string = tenant().tenantId

@description('Client secret of the bot app registration; stored in Key Vault, never in an app setting.')
@secure()
param botAppPassword string

@description('When that client secret expires, Unix seconds (shown on the Key Vault secret so rotation is visible).')
param botSecretExpiresOn int

@description('Teams app id of the manifest (appPackage/manifest.json "id"; Graph proactive installs look it up). Empty until the app is uploaded.')
param teamsAppId string = ''

@description('Tenants the app serves: tenant GUIDs separated by commas, or * for every tenant. Default: this tenant only.')
param tenantAllowList string = tenant().tenantId

@description('Durable Functions backend: AzureStorage (the storage account below) or DurableTaskScheduler (a managed scheduler).')
@allowed([
  'AzureStorage'
  'DurableTaskScheduler'
])
param durableBackend string = 'AzureStorage'

@description('Storage replication.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSku string = 'Standard_LRS'

@description('Largest number of Flex Consumption instances.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Azure Bot SKU (Teams is a standard channel: free on F0).')
@allowed([
  'F0'
  'S1'
])
param botSku string = 'F0'

@description('E-mail address for the dead-letter and breaker alerts; empty = no notification.')
param alertEmail string = ''

@description('Overrides of the product settings in defaultTuning (same names, string values), e.g. {"SEND_RATE_PER_TENANT": "30"}.')
param tuning object = {}

@description('Tags for every resource.')
param tags object = {}

// ---------------------------------------------------------------- names

var suffix = uniqueString(subscription().id, resourceGroup().id, appName)
var names = {
  storage: take('st${replace(toLower(appName), '-', '')}${suffix}', 24)
  functionApp: 'func-${appName}-${suffix}'
  plan: 'plan-${appName}-${suffix}'
  workspace: 'log-${appName}-${suffix}'
  appInsights: 'appi-${appName}-${suffix}'
  keyVault: take('kv-${appName}-${suffix}', 24)
  bot: 'bot-${appName}-${suffix}'
  scheduler: 'dts-${appName}-${suffix}'
  deploymentContainer: 'app-package-${take(suffix, 8)}'
}
var useScheduler = durableBackend == 'DurableTaskScheduler'
// host.json extensions.durableTask.hubName; the scheduler's task hub takes the same name.
var taskHubName = 'ProactiveHub'

// Product settings with their defaults, exactly as proactive/settings.py resolves them when unset
// (tests/unit/test_deployment.py checks both directions). Override through the tuning parameter.
var defaultTuning = {
  SEND_RATE_PER_TENANT: '50'
  SEND_RATE_OVERRIDES: ''
  GRAPH_RATE_PER_TENANT: '30'
  BATCH_SIZE: '50'
  BATCHES_PER_EXECUTION: '20'
  MAX_SEND_ATTEMPTS: '5'
  SEND_CONCURRENCY: '32'
  SEND_TIMEOUT_SECONDS: '30'
  SEND_RETRY_BASE_SECONDS: '0.5'
  SEND_RETRY_MAX_SECONDS: '30'
  SEND_MAX_RETRY_AFTER_SECONDS: '60'
  RETRY_HANDOFF_SECONDS: '60'
  RECONCILE_AFTER_SECONDS: '900'
  TABLE_REFERENCES: 'references'
  TABLE_PREFERENCES: 'preferences'
  TABLE_NOTIFICATIONS: 'notifications'
  TABLE_DELIVERIES: 'deliveries'
  TABLE_DEADLETTERS: 'deadletters'
  TABLE_THREADS: 'threads'
  QUEUE_DELIVERIES_RETRY: 'deliveries-retry'
  QUEUE_INSTALLS: 'installs'
  // Empty = the code's default for the cloud (the public cloud today); set a URL only to point elsewhere.
  GRAPH_BASE_URL: ''
  AUTHORITY_HOST: ''
  BOT_OPENID_METADATA_URL: ''
  // public, gcc, gcchigh or dod: the token authority and scope, accepted issuer, Graph and allow-list together.
  BOT_CLOUD: 'public'
  // Retry-After of the 202 answers: how often Logic Apps and Power Automate poll the status URL.
  STATUS_RETRY_AFTER_SECONDS: '5'
  // Where proactively installed users' messages go until Teams' own event brings their service URL.
  TEAMS_SERVICE_URL: 'https://smba.trafficmanager.net/teams'
  // Reinstall the app for users who uninstalled it themselves (never for users who blocked the bot).
  GRAPH_REINSTALL_AFTER_UNINSTALL: 'false'
}
var productTuning = union(defaultTuning, tuning)

// ---------------------------------------------------------------- resources

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    workspaceName: names.workspace
    appInsightsName: names.appInsights
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    location: location
    name: names.storage
    skuName: storageSku
    deploymentContainerName: names.deploymentContainer
    tableNames: [
      productTuning.TABLE_REFERENCES
      productTuning.TABLE_PREFERENCES
      productTuning.TABLE_NOTIFICATIONS
      productTuning.TABLE_DELIVERIES
      productTuning.TABLE_DEADLETTERS
      productTuning.TABLE_THREADS
    ]
    queueNames: [
      productTuning.QUEUE_DELIVERIES_RETRY
      '${productTuning.QUEUE_DELIVERIES_RETRY}-poison'
      productTuning.QUEUE_INSTALLS
      '${productTuning.QUEUE_INSTALLS}-poison'
    ]
    tags: tags
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionApp'
  params: {
    location: location
    name: names.functionApp
    planName: names.plan
    deploymentContainerUrl: '${storage.outputs.blobEndpoint}${names.deploymentContainer}'
    maximumInstanceCount: maximumInstanceCount
    tags: tags
  }
}

module storageRoles 'modules/storage-roles.bicep' = {
  name: 'storageRoles'
  params: {
    storageAccountName: storage.outputs.name
    principalId: functionApp.outputs.principalId
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyVault'
  params: {
    location: location
    name: names.keyVault
    botAppPassword: botAppPassword
    secretExpiresOn: botSecretExpiresOn
    readerPrincipalId: functionApp.outputs.principalId
    tags: tags
  }
}

module scheduler 'modules/durable-task-scheduler.bicep' = if (useScheduler) {
  name: 'durableTaskScheduler'
  params: {
    location: location
    name: names.scheduler
    taskHubName: taskHubName
    principalId: functionApp.outputs.principalId
    tags: tags
  }
}

// Every app setting the code reads (proactive/settings.py) besides the tuning above; applied after it, so tuning cannot
// replace one of these. Nothing else: the deployment test
// fails on a setting here that nothing reads, and on a setting the code reads that is missing here.
var appSettings = {
  // Identity-based AzureWebJobsStorage (Flex Consumption): the host, the Durable Azure Storage provider and the
  // product's adapters all derive https://<account>.{blob,queue,table}.core.windows.net and use the app identity.
  AzureWebJobsStorage__accountName: storage.outputs.name
  AzureWebJobsStorage__credential: 'managedidentity'
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.appInsightsConnectionString
  MicrosoftAppId: botAppId
  MicrosoftAppTenantId: botAppTenantId
  MicrosoftAppType: 'SingleTenant'
  MicrosoftAppPassword: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.secretUri})'
  TEAMS_APP_ID: teamsAppId
  TENANT_ALLOW_LIST: tenantAllowList
  FUNCTION_KEY_REQUIRED: 'true'
}

// The Durable Task Scheduler replaces host.json's storage provider through the host's configuration overrides
// (AzureFunctionsJobHost__<path>), so one host.json serves both backends.
var schedulerEndpoint = useScheduler ? scheduler!.outputs.endpoint : ''
var durableTaskSchedulerSettings = {
  DURABLE_TASK_SCHEDULER_CONNECTION_STRING: 'Endpoint=${schedulerEndpoint};Authentication=ManagedIdentity'
  AzureFunctionsJobHost__extensions__durableTask__storageProvider__type: 'azureManaged'
  AzureFunctionsJobHost__extensions__durableTask__storageProvider__connectionStringName: 'DURABLE_TASK_SCHEDULER_CONNECTION_STRING'
  AzureFunctionsJobHost__extensions__durableTask__hubName: taskHubName
}

module settings 'modules/appsettings.bicep' = {
  name: 'appSettings'
  params: {
    functionAppName: functionApp.outputs.name
    settings: union(productTuning, appSettings, useScheduler ? durableTaskSchedulerSettings : {})
  }
  // The host starts with these settings: its identity must already hold the storage roles and the secret.
  dependsOn: [
    storageRoles
  ]
}

module bot 'modules/bot.bicep' = {
  name: 'bot'
  params: {
    name: names.bot
    displayName: appName
    endpoint: 'https://${functionApp.outputs.defaultHostName}/api/messages'
    appId: botAppId
    appTenantId: botAppTenantId
    sku: botSku
    tags: tags
  }
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  params: {
    location: location
    namePrefix: '${appName}-${suffix}'
    workspaceId: monitoring.outputs.workspaceId
    alertEmail: alertEmail
    tags: tags
  }
}

// ---------------------------------------------------------------- outputs

@description('Function App name (func azure functionapp publish <this>).')
output functionAppName string = functionApp.outputs.name

@description('Bot messaging endpoint registered on the Azure Bot.')
output messagingEndpoint string = 'https://${functionApp.outputs.defaultHostName}/api/messages'

@description('Broadcast API base URL for Logic Apps, Power Automate and services.')
output broadcastsUrl string = 'https://${functionApp.outputs.defaultHostName}/api/broadcasts'

@description('Storage account of AzureWebJobsStorage.')
output storageAccountName string = storage.outputs.name
