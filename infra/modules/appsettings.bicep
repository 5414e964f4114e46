metadata name = 'appsettings'
metadata description = 'App settings of the Function App, applied after the role assignments they depend on (Key Vault references, identity-based storage).'

@description('Function App name.')
param functionAppName string

@description('App settings (name: value). main.bicep lists them; tests/unit/test_deployment.py keeps that list in step with proactive/settings.py.')
@secure()
param settings object

resource site 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  // Checkov applies its site-configuration checks to every Microsoft.Web/sites/config resource, including this one,
  // which holds app settings only (name 'appsettings'); the site itself is checked in functionapp.bicep.
  // checkov:skip=CKV_AZURE_13:App settings only; App Service Authentication is decided (and explained) on the site.
  // checkov:skip=CKV_AZURE_63:App settings only; a Flex Consumption app logs through Application Insights, not App Service HTTP logs.
  // checkov:skip=CKV_AZURE_65:App settings only; detailed error pages are an App Service (IIS) feature, not used by a Functions app.
  // checkov:skip=CKV_AZURE_66:App settings only; failed request tracing is an App Service (IIS) feature, not used by a Functions app.
  // checkov:skip=CKV_AZURE_80:App settings only; the app is Python 3.11, no .NET Framework version applies.
  // checkov:skip=CKV_AZURE_88:App settings only; Flex Consumption has no Azure Files content share (packages deploy from a blob container).
  // checkov:skip=CKV_AZURE_222:App settings only; public network access is decided (and explained) on the site.
  parent: site
  name: 'appsettings'
  properties: settings
}
