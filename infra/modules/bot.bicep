metadata name = 'bot'
metadata description = 'Azure Bot (single-tenant app registration) with its Teams channel, pointing at the Function App /api/messages.'

@description('Azure Bot resource name (globally unique).')
param name string

@description('Name shown in the Azure portal.')
param displayName string

@description('Messaging endpoint, https://<function app host>/api/messages.')
param endpoint string

@description('Client id of the bot Entra app registration (MicrosoftAppId).')
param appId string

@description('Tenant of the app registration (MicrosoftAppTenantId).')
param appTenantId string

@description('F0 (free, standard channels such as Teams are unmetered) or S1.')
@allowed([
  'F0'
  'S1'
])
param sku string = 'F0'

@description('Teams cloud of the channel.')
@allowed([
  'CommercialDeployment'
  'GallatinDeployment'
])
param teamsDeploymentEnvironment string = 'CommercialDeployment'

@description('Tags for every resource.')
param tags object = {}

resource bot 'Microsoft.BotService/botServices@2022-09-15' = {
  name: name
  location: 'global'
  tags: tags
  kind: 'azurebot'
  sku: {
    name: sku
  }
  properties: {
    displayName: displayName
    endpoint: endpoint
    msaAppId: appId
    msaAppTenantId: appTenantId
    // New multi-tenant bot registrations were deprecated after 2025-07-31 (teams-platform-facts.md section 2).
    msaAppType: 'SingleTenant'
    publicNetworkAccess: 'Enabled'
  }
}

resource teams 'Microsoft.BotService/botServices/channels@2022-09-15' = {
  parent: bot
  name: 'MsTeamsChannel'
  location: 'global'
  properties: {
    channelName: 'MsTeamsChannel'
    properties: {
      isEnabled: true
      deploymentEnvironment: teamsDeploymentEnvironment
    }
  }
}

@description('Azure Bot resource id.')
output id string = bot.id
