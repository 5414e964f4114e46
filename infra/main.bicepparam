// Parameters for main.bicep. Secrets come from the environment, never from this file:
//   export BOT_APP_ID=<client id> BOT_APP_PASSWORD=<client secret> BOT_SECRET_EXPIRES_ON=$(date -d '+1 year' +%s)
//   az deployment group what-if -g <resource group> -p infra/main.bicepparam
using './main.bicep'

param appName = 'proactive'
param botAppId = readEnvironmentVariable('BOT_APP_ID')
param botAppPassword = readEnvironmentVariable('BOT_APP_PASSWORD')
param botSecretExpiresOn = int(readEnvironmentVariable('BOT_SECRET_EXPIRES_ON'))
param teamsAppId = readEnvironmentVariable('TEAMS_APP_ID', '')
param durableBackend = 'AzureStorage'
param alertEmail = readEnvironmentVariable('ALERT_EMAIL', '')
param tuning = {
  // e.g. SEND_RATE_PER_TENANT: '30' for tenants on the older, lower Teams limit
}
