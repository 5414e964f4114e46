metadata name = 'storage'
metadata description = 'The storage account of AzureWebJobsStorage: the host, the Durable task hub (Azure Storage backend), the product tables and queues, and the Flex Consumption deployment container. Shared keys are off: every client uses Entra ID.'

@description('Azure region.')
param location string

@description('Storage account name (3-24 lowercase letters and digits).')
@minLength(3)
@maxLength(24)
param name string

@description('Replication. LRS is enough for delivery state that a broadcast can rebuild; ZRS survives a zone outage.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param skuName string = 'Standard_LRS'

@description('Blob container Flex Consumption deploys the app package to.')
param deploymentContainerName string

@description('Product tables (TABLE_* settings).')
param tableNames array

@description('Product queues (QUEUE_* settings) and their -poison twins.')
param queueNames array

@description('Tags for every resource.')
param tags object = {}

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_206:Replication is a parameter (skuName); LRS is the cost-conscious default for state a broadcast can rebuild.
  // checkov:skip=CKV_AZURE_59:Flex Consumption reaches storage over the public endpoint unless the app is VNet-integrated; identity-only access (shared keys off) is the control here. Private endpoints are an opt-in left to the deployer.
  // checkov:skip=CKV_AZURE_35:Same reason as CKV_AZURE_59: the default action must allow the Functions platform to reach the account without VNet integration.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

// The adapters create their tables on first use too; declaring them makes a what-if show the whole shape.
resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [
  for table in tableNames: {
    parent: tableService
    name: table
  }
]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [
  for queue in queueNames: {
    parent: queueService
    name: queue
  }
]

@description('Storage account name (AzureWebJobsStorage__accountName).')
output name string = account.name

@description('Storage account resource id (scope of the data role assignments).')
output id string = account.id

@description('Blob endpoint, for the Flex Consumption deployment container URL.')
output blobEndpoint string = account.properties.primaryEndpoints.blob
