metadata name = 'functionapp'
metadata description = 'Flex Consumption plan and the Python Function App (system-assigned identity, identity-based storage, deployment from a blob container with the same identity).'

@description('Azure region.')
param location string

@description('Function App name (also the host name: https://<name>.azurewebsites.net).')
param name string

@description('Flex Consumption plan name.')
param planName string

@description('Blob container URL the platform deploys the app package from.')
param deploymentContainerUrl string

@description('Largest number of instances the app may scale out to.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Memory per instance, MB (2048 is the Flex Consumption default).')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Tags for every resource.')
param tags object = {}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Flex Consumption zone redundancy exists only in some regions and bills always-ready instances in each zone; the Durable state it would protect already lives in storage. Opt in per deployment.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_17:Client certificates cannot be required: the Bot Connector calls /api/messages without one (it authenticates with a JWT the app validates).
  // checkov:skip=CKV_AZURE_212:Flex Consumption scales from zero by design; a failover minimum would be always-ready instances, a cost choice per deployment (functionAppConfig.scaleAndConcurrency.alwaysReady).
  // checkov:skip=CKV_AZURE_213:App Service health check rotates instances behind a fixed-size load balancer; Flex Consumption replaces instances itself. GET /api/health (anonymous, reveals nothing) is there for an Application Insights availability test.
  // checkov:skip=CKV_AZURE_222:The bot endpoint must be reachable from the Bot Connector service over the internet.
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      remoteDebuggingEnabled: false
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// Deploy and publish with the identity too: no basic-auth publishing credentials.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

@description('Function App name.')
output name string = site.name

@description('Default host name (the bot messaging endpoint is https://<this>/api/messages).')
output defaultHostName string = site.properties.defaultHostName

@description('Object id of the system-assigned identity (role assignments, Key Vault references).')
output principalId string = site.identity.principalId
