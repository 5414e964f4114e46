metadata name = 'keyvault'
metadata description = 'Key Vault (RBAC authorisation) holding the bot client secret; the Function App reads it through a Key Vault reference with its own identity.'

@description('Azure region.')
param location string

@description('Key Vault name (3-24 characters).')
@minLength(3)
@maxLength(24)
param name string

@description('Name of the secret holding the bot client secret.')
param secretName string = 'bot-app-password'

@description('The bot app registration client secret (MicrosoftAppPassword).')
@secure()
param botAppPassword string

@description('When the client secret expires (Unix seconds). Match the expiry set on the app registration secret so the vault shows when to rotate.')
param secretExpiresOn int

@description('Object id of the Function App identity (gets Key Vault Secrets User on the secret only).')
param readerPrincipalId string

@description('Tags for every resource.')
param tags object = {}

// Key Vault Secrets User: read secret contents.
var secretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109:Flex Consumption without VNet integration reaches the vault over its public endpoint; access is RBAC-only with one secret-scoped role.
  // checkov:skip=CKV_AZURE_189:Same reason as CKV_AZURE_109: public network access stays enabled for Key Vault references from a non-integrated app.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource secret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: secretName
  properties: {
    value: botAppPassword
    contentType: 'text/plain; bot client secret (MicrosoftAppPassword)'
    attributes: {
      enabled: true
      exp: secretExpiresOn
    }
  }
}

resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(secret.id, readerPrincipalId, secretsUserRoleId)
  scope: secret
  properties: {
    principalId: readerPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUserRoleId)
  }
}

@description('Versionless secret URI: a Key Vault reference follows rotations within a day.')
output secretUri string = '${vault.properties.vaultUri}secrets/${secret.name}'
