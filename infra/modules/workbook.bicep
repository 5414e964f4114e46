metadata name = 'workbook'
metadata description = 'Azure Monitor workbook on Application Insights: delivery rate, throttle rate, failures by reason and dead letters, from the metrics the app emits (customMetrics).'

@description('Azure region.')
param location string

@description('Resource id of the Application Insights component the workbook queries (its customMetrics table).')
param appInsightsId string

@description('Name shown in the portal (Workbooks gallery of the Application Insights component).')
param displayName string

@description('Tags for every resource.')
param tags object = {}

// The queries live in operations-workbook.json (the portal's own "Advanced Editor" format), so they can be edited in the
// portal and pasted back; tests/unit/test_workbook.py checks that they only name metrics and attributes that
// proactive/telemetry.py emits. fallbackResourceIds makes the workbook open on this component from the gallery.
var content = union(loadJsonContent('operations-workbook.json'), {
  fallbackResourceIds: [
    appInsightsId
  ]
})

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // A workbook's name must be a GUID; derived from the component so a redeployment updates the same workbook.
  name: guid(appInsightsId, 'proactive-operations-workbook')
  location: location
  tags: union(tags, {
    'hidden-title': displayName
  })
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: appInsightsId
    version: 'Notebook/1.0'
    serializedData: string(content)
  }
}

@description('Resource id of the workbook.')
output workbookId string = workbook.id
