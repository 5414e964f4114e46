metadata name = 'storage-roles'
metadata description = 'Data-plane roles of the Function App identity on its storage account: exactly the three the Functions host, the Durable Azure Storage provider and the product adapters need, and no management-plane role.'

@description('Storage account name.')
param storageAccountName string

@description('Object id of the Function App identity.')
param principalId string

// Why each role (Learn: "Connecting to host storage with an identity" and the Durable Functions identity guide):
// - Blob Data Owner: the host's leases and keys, the Durable task hub's leases and large messages, and the
//   Flex Consumption deployment container. The host documents Owner (not Contributor) for AzureWebJobsStorage.
// - Queue Data Contributor: Durable control and work-item queues, the product queues and their triggers.
// - Table Data Contributor: Durable history and instances tables, the product tables.
var roles = {
  blobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  queueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  tableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
}

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource assignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in items(roles): {
    name: guid(account.id, principalId, role.value)
    scope: account
    properties: {
      principalId: principalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.value)
    }
  }
]
